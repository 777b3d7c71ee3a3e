"""How each logged statistic of a step is reduced over micro-batches and ranks, so that the value
in metrics.jsonl is the one a single forward over the whole global batch would give, whatever the
micro-batch split and the number of ranks (docs/algorithms.md §1.4 lists every field).

    tally = Tally()
    tally.add(micro_batch_stats, weight=tokens)   # per micro-batch: its token-mean stats and weight
    out = tally.result(world)                     # sum(w * v) / sum(w) over everything; min of minima

A micro-batch's statistic is a mean over its own valid tokens; weighting it by that token count
and dividing by the global count gives the token mean over every token of the step (a plain mean
of micro-batch means would weigh a short micro-batch like a long one, and a rank with fewer
tokens like one with more). `ratio_min` and `ratio_max` are the minimum and maximum over every
micro-batch that has a valid token. `explained_variance` and the per-sequence means are built
from global sums the same way.
"""

from __future__ import annotations

import math

import torch

from pillion import ranks

MINIMA = frozenset({"ratio_min"})
MAXIMA = frozenset({"ratio_max"})


class Tally:
    """Weighted sums of named statistics, and minima / maxima, over micro-batches (and ranks)."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}  # name -> [sum of weight * value, sum of weight]
        self.extremes: dict[str, float] = {}  # name -> min (MINIMA) or max (MAXIMA) so far

    def add(self, stats: dict[str, float], weight: float) -> None:
        """One micro-batch's statistics, each a mean over `weight` tokens (or rows). With weight 0
        (no valid token: a padding micro-batch) the names are registered and nothing else."""
        for name, value in stats.items():
            if name in MINIMA or name in MAXIMA:
                low = name in MINIMA
                seen = self.extremes.get(name, math.inf if low else -math.inf)
                if weight > 0:
                    seen = min(seen, value) if low else max(seen, value)
                self.extremes[name] = seen
            else:
                total = self.sums.setdefault(name, [0.0, 0.0])
                total[0] += weight * value
                total[1] += weight

    def result(self, world=None) -> dict[str, float]:
        """Every rank's statistics combined (one gather of a few numbers): weighted means, and
        minima / maxima; 0.0 for a statistic that had no valid token anywhere."""
        parts = ranks.gather_list([(self.sums, self.extremes)], world) if world is not None else [
            (self.sums, self.extremes)]
        sums: dict[str, list[float]] = {}
        extremes: dict[str, float] = {}
        for part_sums, part_extremes in parts:  # rank order: the same float sums on every rank
            for name, (value, weight) in part_sums.items():
                total = sums.setdefault(name, [0.0, 0.0])
                total[0] += value
                total[1] += weight
            for name, value in part_extremes.items():
                low = name in MINIMA
                seen = extremes.get(name, math.inf if low else -math.inf)
                extremes[name] = min(seen, value) if low else max(seen, value)
        out = {name: value / weight if weight > 0 else 0.0 for name, (value, weight) in sums.items()}
        out.update({name: value if math.isfinite(value) else 0.0 for name, value in extremes.items()})
        return out


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, world=None) -> float:
    """1 - Var(R - V) / Var(R) over the valid tokens of every rank ([B, T] each; 0.0 when Var(R)
    is 0 or no token is valid), as `losses.explained_variance` computes it in one process: global
    means first, then global sums of squared deviations from them (two small all-reduces), so
    that it is one number for the global batch rather than a mean of per-rank ratios."""
    m = mask.bool()
    returns = returns.detach().double()[m]  # [n] valid tokens
    errors = returns - values.detach().double()[m]  # [n]
    firsts = _sum({"n": float(m.sum()), "r": float(returns.sum()), "e": float(errors.sum())}, world)
    if firsts["n"] == 0:
        return 0.0
    seconds = _sum({"r": float((returns - firsts["r"] / firsts["n"]).square().sum()),
                    "e": float((errors - firsts["e"] / firsts["n"]).square().sum())}, world)
    return 1.0 - seconds["e"] / seconds["r"] if seconds["r"] > 0 else 0.0


def _sum(values: dict[str, float], world) -> dict[str, float]:
    return ranks.sum_floats(values, world) if world is not None else values


def row_means(values: dict[str, torch.Tensor], real: torch.Tensor, world=None) -> dict[str, float]:
    """Means over the real rows of every rank (padding rows, `real` False, left out) of per-row
    values [B] each: one global mean per name."""
    sums = {name: float((v.double() * real).sum()) for name, v in values.items()}
    sums["_rows"] = float(real.sum())
    sums = _sum(sums, world)
    rows = sums.pop("_rows")
    return {name: total / rows if rows else 0.0 for name, total in sums.items()}
