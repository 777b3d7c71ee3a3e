"""pass@k and its statistics over a set of problems: by level and subject, the pass@j curve, and
a confidence interval for pass@1.

Unbiased pass@k (Chen et al. 2107.03374 §2.1; openai/human-eval `estimate_pass_at_k`):
pass@k = 1 - C(n-c, k) / C(n, k), computed in the stable product form
1 - prod_{j=n-c+1..n} (1 - k/j), and 1.0 when n - c < k (docs/algorithms.md §14).
pass@1 over n samples equals the mean accuracy c/n (DeepSeek-R1's "pass@1 with k samples").

Every function below takes `counts`, the correct samples (of k) per problem:

    group(counts, k)                      {"pass@1", "pass@k", "n"}
    curve(counts, k)                      {"1": pass@1, "2": pass@2, "4": ..., str(k): pass@k}
    by_level(problems, counts, k)         {level: group}, levels in numeric order, "unknown" last
    by_subject(problems, counts, k)       {subject: group}, by name
    interval(counts, k, seed)             pass@1's 95% bootstrap interval and standard error
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from pillion.problem import Problem

BOOTSTRAP_RESAMPLES = 1000  # resamples of the problem set for the pass@1 interval


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n samples
    with c correct is correct. Requires 0 <= c <= n and 1 <= k <= n (k > n is a ValueError)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / j for j in range(n - c + 1, n + 1))


def group(counts: list[int], k: int) -> dict[str, float | int]:
    """pass@1, pass@k and n for the problems whose correct-sample counts are `counts`:
    pass@1 = mean of c / k; pass@k = mean of pass_at_k(k, c, k) = fraction with c >= 1."""
    return {
        "pass@1": sum(c / k for c in counts) / len(counts),
        "pass@k": sum(pass_at_k(k, c, k) for c in counts) / len(counts),
        "n": len(counts),
    }


def curve(counts: list[int], k: int) -> dict[str, float]:
    """Unbiased pass@j for j = 1, 2, 4, ... up to k (and k itself), all from the same k samples."""
    js = sorted({j for j in (2**e for e in range(k.bit_length())) if j <= k} | {k})
    return {str(j): sum(pass_at_k(k, c, j) for c in counts) / len(counts) for j in js}


def _level_key(level: int | None) -> str:
    return "unknown" if level is None else str(level)


def _sort_key(key: str) -> tuple[int, int | str]:
    """Numeric levels in order, then names, so "10" follows "9" and "unknown" comes last."""
    return (0, int(key)) if key.isdigit() else (1, key)


def subject(problem: Problem) -> str:
    """MATH-500 rows carry `subject`, MATH rows `type`; other sources group by source."""
    value = problem.meta.get("subject") or problem.meta.get("type") or problem.source
    return str(value)


def by_level(problems: list[Problem], counts: list[int], k: int) -> dict[str, dict[str, float | int]]:
    """`group` per difficulty level ("unknown" for problems without one), in level order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for problem, c in zip(problems, counts):
        groups[_level_key(problem.level)].append(c)
    return {key: group(groups[key], k) for key in sorted(groups, key=_sort_key)}


def by_subject(problems: list[Problem], counts: list[int], k: int) -> dict[str, dict[str, float | int]]:
    """`group` per subject (`subject`), by name."""
    groups: dict[str, list[int]] = defaultdict(list)
    for problem, c in zip(problems, counts):
        groups[subject(problem)].append(c)
    return {key: group(groups[key], k) for key in sorted(groups)}


def interval(counts: list[int], k: int, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """pass@1's 95% interval (percentile bootstrap over problems) and its binomial standard error.

    counts: correct samples (of k) per problem. The bootstrap draws the n problems with
    replacement `resamples` times (numpy generator seeded with `seed`) and takes the 2.5% and
    97.5% quantiles of the resampled pass@1; it keeps the k samples of a problem together, so
    problems that are easy for every sample do not count as k independent successes.
    pass@1_se = sqrt(p (1 - p) / n) over the n problems: exact for k = 1 and an upper bound for
    k > 1 (a problem's mean of k samples varies less than one Bernoulli draw).
    """
    n = len(counts)
    rates = np.asarray(counts, dtype=np.float64) / k  # [n]
    p = float(rates.mean())
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # [resamples, n]
    low, high = np.quantile(rates[draws].mean(axis=1), [0.025, 0.975])
    return {
        "pass@1_ci95": [float(low), float(high)],
        "pass@1_se": math.sqrt(max(p * (1.0 - p), 0.0) / n),
        "ci": {"method": "percentile bootstrap over problems", "resamples": resamples, "seed": seed},
    }
