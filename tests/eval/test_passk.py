"""Unbiased pass@k (docs/algorithms.md §14) against the worked examples and the binomial form."""

import math

import pytest

from pillion.eval.passk import pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (10, 3, 1, 0.3),  # 1 - (1 - 1/8)(1 - 1/9)(1 - 1/10) = 1 - (7/8)(8/9)(9/10) = 1 - 0.7
        (10, 3, 5, 0.916667),  # 1 - (3/8)(4/9)(5/10) = 1 - 60/720 = 11/12
        (5, 0, 1, 0.0),  # c = 0: the product over j = 6..5 is empty (= 1), so 1 - 1 = 0
        (4, 2, 3, 1.0),  # n - c = 2 < k = 3: every draw of 3 contains a correct one
        (16, 1, 8, 0.5),  # 1 - (1 - 8/16)
        (8, 8, 8, 1.0),
    ],
)
def test_pass_at_k_worked_examples(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("n", [1, 5, 16, 64])
def test_pass_at_k_matches_binomial_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_1_is_mean_accuracy():
    # DeepSeek-R1's pass@1 over k samples = c / n
    assert pass_at_k(64, 17, 1) == pytest.approx(17 / 64, abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows a float; the product form does not
    assert 0.0 < pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 2, 5), (4, 2, 0), (4, 5, 1), (4, -1, 1)])
def test_pass_at_k_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


