"""Symbolic equivalence of two normalised answers; runs only inside a `pool.py` worker.

`symbolic_equal(pred, gold, imaginary)` parses both sides with math-verify's LaTeX parser
(latex2sympy over an ANTLR grammar, `LatexExtractionConfig` only) and compares the sympy
objects. Departures from `math_verify.verify`, which it calls for everything but numbers:

- Symbols are positive reals (`\\frac{1}{\\sqrt{n}}` = `\\sqrt{1/n}`, `\\sqrt{x^2}` = x), and
  `i` is the imaginary unit when `imaginary` is true (`e^{i\\pi}` = -1, `14.0 - 1.0i` = 14 - i);
  `math.imaginary_unit(question)` decides it from the problem. Not in equations and
  inequalities: math-verify compares two relations by solving them, and with positive
  symbols `y = -2x` and `y = -7x` both have no solution, so they would compare equal.
- Two numbers are compared here, under the precision rule of `math.py` (math-verify rounds
  to 6 decimals, which makes all tiny numbers equal and 3.14 close to pi): a gold decimal
  with k places accepts what rounds to it; an exact gold accepts a prediction with a decimal
  in it within a relative 1e-6; two exact values must agree to a relative 1e-12 at 50 digits
  (two rationals exactly).

Safety: the inputs passed `math._is_safe_for_sympy`; `ExprExtractionConfig` (which would run
`sympy.parse_expr`, an `eval`) is never used, and the worker process has a memory cap.
"""

from __future__ import annotations

import re
from fractions import Fraction

from pillion.rewards.math import RELATIVE_TOLERANCE, parse_number, parse_structure


def _parsed(s: str):
    from math_verify import LatexExtractionConfig, parse

    # Wrapped in $...$ so the LaTeX extractor takes the whole answer; no timeout here (the
    # parent's deadline is the timeout, and signals would not be thread-safe anyway).
    return parse(f"${s}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)


def _assume(x, imaginary: bool, positive: bool = True):
    """Symbols as positive reals (when `positive`), `i` as the imaginary unit (strings pass
    through)."""
    import sympy

    free = getattr(x, "free_symbols", None)
    if not free:
        return x
    mapping = {}
    for s in free:
        if not isinstance(s, sympy.Symbol):
            continue
        if s.name == "i" and imaginary:
            mapping[s] = sympy.I
        elif positive:
            mapping[s] = sympy.Symbol(s.name, positive=True)
    return x.xreplace(mapping) if mapping else x


def _is_relation(x) -> bool:
    import sympy

    return isinstance(x, (sympy.core.relational.Relational, sympy.And, sympy.Or))


def _is_number(x) -> bool:
    import sympy

    return isinstance(x, sympy.Expr) and not isinstance(x, sympy.Set) and bool(x.is_number)


def _numbers_equal(p, g, pred: str, gold: str) -> bool:
    """The precision rule for two sympy numbers; `pred`/`gold` are their source strings."""
    import sympy

    gold_literal = parse_number(gold)
    if gold_literal is not None and gold_literal.places is not None and not gold_literal.percent:
        value = sympy.N(p, 50)  # the prediction must round to the k-place gold
        if not value.is_real or not value.is_finite:
            return False
        return abs(Fraction(str(value)) - gold_literal.value) * 2 * 10**gold_literal.places <= 1
    if isinstance(g, sympy.Rational) and isinstance(p, sympy.Rational) and not re.search(r"\d\.\d", pred):
        return g == p
    a, b = sympy.N(p, 50), sympy.N(g, 50)
    if not (a.is_finite and b.is_finite):
        return False
    tolerance = RELATIVE_TOLERANCE if re.search(r"\d\.\d", pred) else Fraction(1, 10**12)
    tolerance = sympy.Rational(tolerance.numerator, tolerance.denominator)
    scale = abs(b)
    if scale == 0:
        return bool(abs(a) <= sympy.Float("1e-12", 50))
    return bool(abs(a - b) <= scale * tolerance)


def symbolic_equal(pred: str, gold: str, imaginary: bool = True) -> bool:
    """True when sympy finds the normalised answers equal (rules in the module docstring)."""
    import sympy
    from math_verify import verify

    gold_parsed, pred_parsed = _parsed(gold), _parsed(pred)
    if not gold_parsed or not pred_parsed:
        return False
    positive = not (_is_relation(gold_parsed[0]) or _is_relation(pred_parsed[0]))
    gold_parsed = [_assume(x, imaginary, positive) for x in gold_parsed]
    pred_parsed = [_assume(x, imaginary, positive) for x in pred_parsed]
    g, p = gold_parsed[0], pred_parsed[0]
    if _is_number(g) and _is_number(p):
        return _numbers_equal(p, g, pred, gold)
    if isinstance(g, sympy.MatrixBase) and isinstance(p, sympy.MatrixBase) and g.shape == p.shape:
        entries = _entries(pred, gold)
        if entries and all(_is_number(x) for x in list(g) + list(p)):
            return all(_numbers_equal(a, b, sa, sb) for a, b, (sa, sb) in zip(p, g, entries))
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _entries(pred: str, gold: str) -> list[tuple[str, str]] | None:
    """Row-major entry strings of two matrices of the same size, for the precision rule."""
    kind_p, _, cells_p = parse_structure(pred)
    kind_g, _, cells_g = parse_structure(gold)
    if kind_p != "matrix" or kind_g != "matrix" or len(cells_p) != len(cells_g):
        return None
    return list(zip(cells_p, cells_g))
