"""Weighted sampling across sources and difficulty buckets, resumable from a checkpoint.

Each draw picks a source with probability proportional to `weights`, then a level bucket inside
that source with probability proportional to `level_weights` (over the levels the source has),
then the next problem of that bucket. Buckets are walked epoch-style, without replacement: a
shuffled order is walked to its end, then reshuffled. Defaults draw every problem equally often:
source weights proportional to pool sizes and level weights proportional to bucket sizes.
Problems without a level form the bucket `None`.

State is small and JSON-serialisable: the number of draws so far and, per bucket, its epoch and
cursor. Randomness is derived from (seed, draw index) and (seed, source, level, epoch), never
from a running generator, so `state_dict()` mid-run, a fresh `Mixture` and `load_state_dict()`
continue the very same sequence, however the draws are batched. The pools themselves are not
stored; a fingerprint of each pool's ids is, and a resume onto different pools is refused.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from itertools import accumulate
from typing import Any

from pillion.errors import UserError
from pillion.problem import Problem


def _key(level: int | None) -> str:
    return "none" if level is None else str(level)


def _level(key) -> int | None:
    """A level_weights key as the level it names: 3 and "3" -> 3; None, "none", "null" -> None
    (YAML, JSON and key=value overrides may give the keys as strings)."""
    if key is None or (isinstance(key, str) and key.strip().lower() in ("none", "null")):
        return None
    try:
        return int(key)
    except (TypeError, ValueError):
        raise ValueError(f"level_weights: a key must be a level (an int) or null, got {key!r}") from None


def _fingerprint(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(p.id.encode())
        h.update(b"\0")
    return f"{len(problems)}:{h.hexdigest()[:16]}"


class _Bucket:
    """The problems of one (source, level), walked in a shuffled order that renews each epoch."""

    def __init__(self, problems: list[Problem], seed_prefix: str):
        self.problems, self.seed_prefix = problems, seed_prefix
        self.epoch, self.cursor = 0, 0
        self._order: list[int] | None = None

    def order(self) -> list[int]:
        if self._order is None:
            self._order = list(range(len(self.problems)))
            random.Random(f"{self.seed_prefix}/{self.epoch}").shuffle(self._order)
        return self._order

    def next(self) -> Problem:
        if self.cursor == len(self.problems):
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        problem = self.problems[self.order()[self.cursor]]
        self.cursor += 1
        return problem


class Mixture:
    """Deterministic weighted sampler over named pools of Problems.

    pools: source name -> problems (ids should be unique across pools).
    weights: source name -> relative weight; sources left out get 0. None: pool sizes.
    level_weights: level -> relative weight inside every source; levels left out get 0
        (use the key None for problems without a level). None: bucket sizes.
    """

    def __init__(self, pools: dict[str, list[Problem]], weights: dict[str, float] | None = None,
                 level_weights: dict[int | None, float] | None = None, seed: int = 0):
        if not pools:
            raise ValueError("Mixture needs at least one pool")
        self.seed = seed
        self.level_weights = None if level_weights is None else {_level(k): float(w) for k, w in level_weights.items()}
        self.draws = 0
        self.pools: dict[str, list[Problem]] = {}
        self.generation: dict[str, int] = {}  # bumped by replace_pool: new shuffles, new cursors
        self.buckets: dict[str, dict[int | None, _Bucket]] = {}
        for name, problems in pools.items():
            self.generation[name] = 0
            self._set_pool(name, problems)
        self.set_weights(weights)

    # -- configuration -------------------------------------------------------------------------

    def _set_pool(self, name: str, problems: list[Problem]) -> None:
        self.pools[name] = list(problems)
        by_level: dict[int | None, list[Problem]] = {}
        for p in self.pools[name]:
            by_level.setdefault(p.level, []).append(p)
        prefix = f"{self.seed}/{name}/{self.generation[name]}"
        self.buckets[name] = {lv: _Bucket(ps, f"{prefix}/{_key(lv)}")
                              for lv, ps in sorted(by_level.items(), key=lambda kv: _key(kv[0]))}

    def set_weights(self, weights: dict[str, float] | None) -> None:
        """Change source weights (e.g. at a stage boundary); bucket positions are kept."""
        if weights is None:
            weights = {name: float(len(ps)) for name, ps in self.pools.items()}
        unknown = set(weights) - set(self.pools)
        if unknown:
            raise ValueError(f"weights name unknown pools {sorted(unknown)}; "
                             f"pools: {sorted(self.pools)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self.weights = {name: float(weights.get(name, 0.0)) for name in self.pools}
        self._build_tables()

    def replace_pool(self, name: str, problems: list[Problem]) -> None:
        """Swap a pool's contents (history resampling): its buckets start a fresh shuffle."""
        if name not in self.pools:
            raise KeyError(f"no pool named {name!r}; pools: {sorted(self.pools)}")
        self.generation[name] += 1
        self._set_pool(name, problems)
        self._build_tables()

    def _level_weight(self, name: str, level: int | None) -> float:
        if self.level_weights is None:
            return float(len(self.buckets[name][level].problems))
        return float(self.level_weights.get(level, 0.0))

    def _build_tables(self) -> None:
        """Cumulative weights for the two choices of a draw: source, then level in the source."""
        self._sources = [n for n in self.pools if self.weights[n] > 0]
        for name in self._sources:
            if not any(self._level_weight(name, lv) > 0 for lv in self.buckets[name]):
                levels = ", ".join(_key(lv) for lv in self.buckets[name]) or "it is empty"
                raise UserError(f"config key 'data.level_weights': source {name!r} has no problems in a level with "
                                f"positive weight in {self.level_weights} (its levels: {levels})")
        if not self._sources:
            raise UserError("config keys 'data.weights' / 'data.stages': every source has weight 0 (or is empty)")
        self._source_cum = list(accumulate(self.weights[n] for n in self._sources))
        self._levels: dict[str, list[int | None]] = {}
        self._level_cum: dict[str, list[float]] = {}
        for name in self._sources:
            levels = [lv for lv in self.buckets[name] if self._level_weight(name, lv) > 0]
            self._levels[name] = levels
            self._level_cum[name] = list(accumulate(self._level_weight(name, lv) for lv in levels))

    # -- sampling ------------------------------------------------------------------------------

    def _draw(self) -> Problem:
        rng = random.Random(f"{self.seed}/draw/{self.draws}")
        self.draws += 1
        i = bisect_right(self._source_cum, rng.random() * self._source_cum[-1])
        name = self._sources[min(i, len(self._sources) - 1)]
        cum = self._level_cum[name]
        j = bisect_right(cum, rng.random() * cum[-1])
        level = self._levels[name][min(j, len(cum) - 1)]
        return self.buckets[name][level].next()

    def sample(self, n: int) -> list[Problem]:
        """The next `n` problems of the sequence."""
        return [self._draw() for _ in range(n)]

    def drawn(self, name: str) -> int:
        """Problems drawn from pool `name` since it was created or last replaced."""
        return sum(b.epoch * len(b.problems) + b.cursor for b in self.buckets[name].values())

    # -- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "draws": self.draws,
            "weights": dict(self.weights),
            "level_weights": None if self.level_weights is None else
            {_key(lv): w for lv, w in self.level_weights.items()},
            "pools": {
                name: {"generation": self.generation[name],
                       "fingerprint": _fingerprint(self.pools[name]),
                       "buckets": {_key(lv): [b.epoch, b.cursor]
                                   for lv, b in self.buckets[name].items()}}
                for name in self.pools
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`. The pools must hold what they held when it was saved."""
        if set(state["pools"]) != set(self.pools):
            raise ValueError(f"state has pools {sorted(state['pools'])}, "
                             f"mixture has {sorted(self.pools)}")
        for name, saved in state["pools"].items():
            if saved["fingerprint"] != _fingerprint(self.pools[name]):
                raise ValueError(f"pool {name!r} differs from the one saved "
                                 f"({saved['fingerprint']} vs {_fingerprint(self.pools[name])}); "
                                 "rebuild it (e.g. apply history resampling) before loading")
        self.seed = state["seed"]
        lw = state["level_weights"]
        self.level_weights = None if lw is None else {
            (None if k == "none" else int(k)): float(w) for k, w in lw.items()}
        for name, saved in state["pools"].items():
            self.generation[name] = saved["generation"]
            self._set_pool(name, self.pools[name])  # re-seed the shuffles with seed and generation
            for k, (epoch, cursor) in saved["buckets"].items():
                bucket = self.buckets[name][None if k == "none" else int(k)]
                bucket.epoch, bucket.cursor = epoch, cursor
        self.draws = state["draws"]
        self.set_weights(state["weights"])
