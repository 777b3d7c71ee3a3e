"""Unbiased pass@k (Chen et al. 2107.03374 §2.1; openai/human-eval `estimate_pass_at_k`).

pass@k = 1 - C(n-c, k) / C(n, k), computed in the stable product form
1 - prod_{j=n-c+1..n} (1 - k/j), and 1.0 when n - c < k (docs/algorithms.md §14).
pass@1 over n samples equals the mean accuracy c/n (DeepSeek-R1's "pass@1 with k samples").
"""

from __future__ import annotations

import math
from collections.abc import Iterable


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


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Average of pass_at_k over problems; counts holds one (n, c) per problem."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(values) / len(values)
