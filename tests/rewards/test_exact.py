"""exact.py: canonical forms by hand, and agreement with sympy (the symbolic path) on random
radical and pi expressions."""

import random
from decimal import Decimal
from fractions import Fraction as Q

import pytest

from pillion.rewards.exact import _square_free, decimal_value, exact_value
from pillion.rewards.math import prepare
from pillion.rewards.normalize import normalize_answer


@pytest.mark.parametrize("text,form", [
    ("\\sqrt{12}", {(3, 0): Q(2)}),  # 12 = 2^2 * 3
    ("\\sqrt{8}\\sqrt{2}", {(1, 0): Q(4)}),  # sqrt(16)
    ("\\sqrt{6}\\sqrt{10}", {(15, 0): Q(2)}),  # sqrt(60) = 2 sqrt(15): gcd(6, 10) = 2 comes out
    ("\\frac{\\sqrt{2}}{2}", {(2, 0): Q(1, 2)}),
    ("\\frac{1}{\\sqrt{2}}", {(2, 0): Q(1, 2)}),  # sqrt(2) / (1 * 2)
    ("\\sqrt{\\frac{3}{4}}", {(3, 0): Q(1, 2)}),  # sqrt(3 * 4) / 4 = 2 sqrt(3) / 4
    ("\\frac{1+\\sqrt{5}}{2}", {(1, 0): Q(1, 2), (5, 0): Q(1, 2)}),
    ("(1+\\sqrt{2})^2", {(1, 0): Q(3), (2, 0): Q(2)}),  # 1 + 2 sqrt(2) + 2
    ("2-\\sqrt{2}+\\sqrt{8}", {(1, 0): Q(2), (2, 0): Q(1)}),  # -sqrt(2) + 2 sqrt(2)
    ("\\frac{5\\pi}{6}", {(1, 1): Q(5, 6)}),
    ("2\\pi\\cdot3\\pi", {(1, 2): Q(6)}),
    ("\\pi^{-1}", {(1, -1): Q(1)}),
    ("2\\sqrt{3}^2", {(1, 0): Q(6)}),  # the power binds to the root: 2 * 3
    ("-2^2", {(1, 0): Q(-4)}),
    ("2(3)", {(1, 0): Q(6)}),
    ("0.1+0.2", {(1, 0): Q(3, 10)}),
    ("1-2-3", {(1, 0): Q(-4)}),  # left to right: (1 - 2) - 3
    ("12\\div4\\times3", {(1, 0): Q(9)}),
    ("\\sqrt{2}-\\sqrt{2}", {}),
])
def test_canonical_forms(text, form):
    assert exact_value(text) == form


@pytest.mark.parametrize("text", [
    "3\\frac{1}{2}",  # a mixed number (math.parse_number reads it), not 3 * 1/2
    "\\frac{1}{1+\\sqrt{2}}",  # division by a sum
    "\\sqrt{-4}", "\\sqrt{\\pi}", "2^{\\frac{1}{2}}", "x+1", "e^2", "\\sqrt{2}3",
    "\\frac{1}{0}", "10^{10^{10}}", "\\sqrt{" + "9" * 13 + "}",  # radicand beyond MAX_RADICAND
])
def test_what_is_left_to_sympy(text):
    assert exact_value(text) is None


def test_square_free_parts():
    assert _square_free(72) == (6, 2)  # 72 = 6^2 * 2
    assert _square_free(10007 * 10009) == (1, 10007 * 10009)  # two primes above the trial bound
    assert _square_free(10007**2 * 3) == (10007, 3)  # a square of a prime above it
    assert _square_free(1) == (1, 1)


def test_decimal_value():
    assert abs(decimal_value(exact_value("\\pi")) - Decimal("3.14159265358979323846")) < Decimal("1e-20")
    half_root_two = decimal_value(exact_value("\\frac{\\sqrt{2}}{2}"))
    assert abs(half_root_two - Decimal("0.70710678118654752440")) < Decimal("1e-20")


def _render(a: int, b: int, pi: bool, rng: random.Random) -> str:
    """a * sqrt(b) (* pi), written one of several equal ways."""
    how = rng.randrange(4)
    tail = "\\pi" if pi else ""
    if how == 0:
        return f"{a}\\sqrt{{{b}}}{tail}"
    if how == 1:
        return f"\\sqrt{{{a * a * b}}}{tail}"
    if how == 2:
        return f"\\frac{{{2 * a}\\sqrt{{{b}}}{tail}}}{{2}}"
    return f"\\frac{{{a * b}{tail}}}{{\\sqrt{{{b}}}}}"


def test_agrees_with_sympy_on_random_radicals():
    from pillion.rewards.symbolic import symbolic_equal

    rng = random.Random(0)
    pairs = []
    for _ in range(60):
        terms = [(rng.randint(1, 3), rng.choice([1, 2, 3, 8, 12]), rng.random() < 0.3)
                 for _ in range(rng.randint(1, 2))]
        other = list(terms) if rng.random() < 0.5 else [(a + rng.randint(0, 1), b, pi) for a, b, pi in terms]
        left = "+".join(_render(a, b, pi, rng) for a, b, pi in terms)
        right = "+".join(_render(a, b, pi, rng) for a, b, pi in reversed(other))
        pairs.append((left, right))
    assert sum(exact_value(a) == exact_value(b) for a, b in pairs) >= 20  # both verdicts occur
    for left, right in pairs:
        verdict, p, g = prepare(left, right)
        assert verdict is not None, (left, right)  # decided in-process
        assert verdict == symbolic_equal(normalize_answer(left), normalize_answer(right)), (left, right)
