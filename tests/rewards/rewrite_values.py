"""Values of LaTeX answers for the rewrite generator (rewrites.py): reading, writing, checking.

`number_value` reads integers (thousands separators allowed), decimals, fractions and mixed
numbers exactly. `sympy_value` reads anything else twice, independently: with latex2sympy
(the LaTeX parser math-verify also uses) and with this module's own plain-text reading
(`_plain_text`, then sympy's `parse_expr`). `values_equal` compares two sympy values
numerically at random points; `checked` is that verdict on two LaTeX strings, and
`trusted_expression` the value of a gold both readings agree on. The strings read here are
gold answers of public datasets and their rewrites, never a model's. The writers (`frac`,
`terminating_decimal`, `change_digit`, ...) and the readers of a question (its variable, the
unit it asks for) serve rewrite_shapes.py.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from functools import cache

SEPARATOR = r"(?:,\\!\s*|\{,\}|\\,|,)"  # of thousands: 1,248  1,\!248  1{,}248  1\,248
_INT = re.compile(r"[-+]?\d{1,3}(?:" + SEPARATOR + r"\d{3})+|[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d+|\.\d+|\d+\.)")


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """The argument at s[i]: a {group} (braces matched) or one character; (content, end)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] != "{":
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == "{") - (s[j] == "}")
        if depth == 0:
            return s[i + 1 : j], j + 1
    return None


def canonical_latex(s: str) -> str:
    """The gold with short forms written out (`\\frac43`, `\\sqrt2`, `\\dfrac`, `\\left(`), for
    the parsers of this module."""
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\!|\\,|\\displaystyle", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    out, i = [], 0
    while i < len(s):
        m = re.match(r"\\(frac|sqrt)(?![a-zA-Z])", s[i:])
        if not m:
            out.append(s[i])
            i += 1
            continue
        i += m.end()
        args = 2 if m.group(1) == "frac" else 1
        parts = []
        for _ in range(args):
            arg = _braced(s, i)
            if arg is None:
                return s
            parts.append("{" + canonical_latex(arg[0]) + "}")
            i = arg[1]
        out.append("\\" + m.group(1) + "".join(parts))
    return "".join(out)


def number_value(s: str) -> Fraction | None:
    """The exact value of an integer (thousands separators allowed), a decimal, a fraction
    (`\\frac`, `\\dfrac`, short forms, a/b) or a mixed number; None for anything else."""
    s = s.strip()
    if m := re.fullmatch(_INT.pattern, s):
        return Fraction(re.sub(r"[^\d\-+]", "", m.group(0)))
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    c = canonical_latex(s).replace(" ", "")
    if m := re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", c):
        value = Fraction(int(m.group(2)), int(m.group(3))) if int(m.group(3)) else None
        return None if value is None else (-value if m.group(1) else value)
    if m := re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", c):  # mixed number
        value = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -value if m.group(1) else value
    if m := re.fullmatch(r"(-?\d+)/(\d+)", c):
        return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
    return None


_PLAIN_COMMANDS = {"\\pi": "pi", "\\cdot": "*", "\\times": "*", "\\sin": "sin", "\\cos": "cos", "\\tan": "tan",
                   "\\cot": "cot", "\\sec": "sec", "\\csc": "csc", "\\ln": "log", "\\log": "log", "\\infty": "oo"}


def _plain_text(s: str) -> str | None:
    """A LaTeX expression as sympy's plain-text syntax (this module's own reading, a check on
    latex2sympy's): \\frac, \\sqrt, ^, a few commands; None when it has anything else."""
    s = canonical_latex(s)
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            m = re.match(r"\\(frac|sqrt)\{", s[i:])
            if m:
                first = _braced(s, i + m.end() - 1)
                if first is None:
                    return None
                inner = [_plain_text(first[0])]
                end = first[1]
                if m.group(1) == "frac":
                    second = _braced(s, end)
                    if second is None:
                        return None
                    inner.append(_plain_text(second[0]))
                    end = second[1]
                if None in inner:
                    return None
                out.append(f"(({inner[0]})/({inner[1]}))" if m.group(1) == "frac" else f"sqrt({inner[0]})")
                i = end
                continue
            m = re.match(r"\\[a-zA-Z]+", s[i:])
            if not m or m.group(0) not in _PLAIN_COMMANDS:
                return None
            out.append(" " + _PLAIN_COMMANDS[m.group(0)] + " ")
            i += m.end()
        elif ch == "^":
            arg = _braced(s, i + 1)
            if arg is None:
                return None
            inner = _plain_text(arg[0])
            if inner is None:
                return None
            out.append(f"**({inner})")
            i = arg[1]
        elif ch in "{}":
            out.append("(" if ch == "{" else ")")
            i += 1
        elif ch.isalnum() or ch in "+-*/(). ":
            out.append(ch)
            i += 1
        else:
            return None
    return "".join(out)


@cache
def sympy_value(s: str, reader: str = "latex"):
    """`s` as a sympy expression, read by latex2sympy ("latex") or by `_plain_text` and
    sympy's parser ("plain"), or None. `i` is the imaginary unit in both readings."""
    import sympy

    try:
        if reader == "plain":
            from sympy.parsing.sympy_parser import (
                implicit_multiplication_application,
                parse_expr,
                standard_transformations,
            )

            text = _plain_text(s)
            if text is None:
                return None
            local = {name: sympy.Symbol(name) for name in "abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ"}
            local.update(i=sympy.I, e=sympy.E, pi=sympy.pi, oo=sympy.oo)
            transformations = standard_transformations + (implicit_multiplication_application,)
            return parse_expr(text, local_dict=local, transformations=transformations)
        from latex2sympy2_extended import latex2sympy

        value = latex2sympy(canonical_latex(s))
        if not isinstance(value, sympy.Expr):
            return None
        return sympy.sympify(str(value), locals={"i": sympy.I, "E": sympy.E})
    except Exception:
        return None


def _points(symbols, rng: random.Random, n: int = 4):
    return [{x: Fraction(rng.randint(11, 97), rng.randint(3, 13)) for x in symbols} for _ in range(n)]


def values_equal(a, b, seed: int = 0) -> bool | None:
    """Whether two sympy expressions agree at random points (a relative 1e-9 at 30 digits);
    None when either cannot be evaluated there."""
    import sympy

    rng = random.Random(seed)
    symbols = sorted((a.free_symbols | b.free_symbols), key=str)
    try:
        for point in _points(symbols, rng):
            subs = {x: sympy.Rational(v.numerator, v.denominator) for x, v in point.items()}
            x, y = complex(sympy.N(a.subs(subs), 30)), complex(sympy.N(b.subs(subs), 30))
            if not (math.isfinite(abs(x)) and math.isfinite(abs(y))):
                return None
            if abs(x - y) > 1e-9 * max(1.0, abs(x), abs(y)):
                return False
        return True
    except Exception:
        return None


def checked(a: str, b: str) -> bool | None:
    """The numeric verdict on two LaTeX expressions read by latex2sympy, or None."""
    x, y = sympy_value(a), sympy_value(b)
    if x is None or y is None:
        return None
    return values_equal(x, y)


def trusted_expression(s: str):
    """The sympy value of `s` when both readings agree on it (else None): only then does the
    generator re-render it."""
    x, y = sympy_value(s, "latex"), sympy_value(s, "plain")
    if x is None or y is None or values_equal(x, y) is not True:
        return None
    return x


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def balanced(s: str) -> bool:
    """Whether the brackets of `s` close in order."""
    depth = 0
    for ch in s:
        depth += (ch in "([{") - (ch in ")]}")
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------------------------------------
# Writers, and what a question says about its answer
# ---------------------------------------------------------------------------------------------

def frac(p: int, q: int, command: str = "\\frac") -> str:
    if q == 1:
        return str(p)
    sign = "-" if p < 0 else ""
    return f"{sign}{command}{{{abs(p)}}}{{{q}}}"


def write_number(value: Fraction) -> str:
    return frac(value.numerator, value.denominator)


def terminating_decimal(value: Fraction) -> str | None:
    """The exact decimal of a rational whose denominator has no prime but 2 and 5, else None."""
    q = value.denominator
    for p in (2, 5):
        while q % p == 0:
            q //= p
    if q != 1:
        return None
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    text = digits[: len(digits) - places] + ("." + digits[len(digits) - places :] if places else "")
    return ("-" if value < 0 else "") + text


def with_thousands(n: int, sep: str) -> str:
    digits = f"{abs(n):,}".replace(",", sep)
    return ("-" if n < 0 else "") + digits


def change_digit(s: str, rng: random.Random) -> str | None:
    """`s` with one digit changed (outside \\text, never a new leading zero); None if none."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\\[a-zA-Z]+\{[^{}]*\}", s) if "text" in m.group(0)]
    places = [i for i, ch in enumerate(s) if ch.isdigit() and not any(a <= i < b for a, b in spans)
              and not (i > 0 and s[i - 1] in "_")]
    if not places:
        return None
    i = rng.choice(places)
    leading = (i == 0 or not s[i - 1].isdigit()) and i + 1 < len(s) and s[i + 1].isdigit()
    choices = [d for d in "0123456789" if d != s[i] and not (leading and d == "0")]
    return s[:i] + rng.choice(choices) + s[i + 1 :]


def spaced(s: str) -> str:
    """Extra spaces around operators, commas and relations (the value is unchanged)."""
    s = re.sub(r"(?<=[\w}).\]])\s*([+=<>]|-(?!\d*\}))\s*", r" \1 ", s)
    return re.sub(r",\s*", " , ", s).strip()


_GREEK = r"\\(?:alpha|beta|gamma|delta|theta|lambda|mu|nu|rho|sigma|tau|phi|omega)"


def question_variable(question: str) -> str:
    """The variable a question is about: the most frequent lone variable in its math spans
    ("$x$", "$\\lambda$", "$x_1$"), else "x"."""
    found: dict[str, int] = {}
    for span in re.findall(r"\$([^$]{1,12})\$", question):
        span = span.strip()
        if re.fullmatch(r"[a-zA-Z](?:_\{?\d\}?)?|" + _GREEK, span) and span not in ("i", "e", "A", "I"):
            found[span] = found.get(span, 0) + 1
    return max(found, key=lambda v: (found[v], -question.find(v))) if found else "x"


def interval_variable(question: str) -> str | None:
    """The variable whose values an interval answer gives, when the question asks for the
    values of one ("Solve", "values of $x$", "Find all $p$", a domain); None for a range or
    the values of an expression, where an inequality would need a variable of its own."""
    if re.search(r"\brange\b|possible values of\s*(?:\\\[|\$\$)", question):
        return None
    return question_variable(question)


_UNIT_OF_QUESTION = re.compile(r"\b[Hh]ow (?:many|much) ([a-z]+)")
_UNITS = {"minutes", "hours", "days", "weeks", "years", "miles", "feet", "inches", "meters", "pounds", "cents",
          "cups", "gallons", "liters", "degrees", "seconds", "months", "kilometers", "ounces", "kilograms"}


def question_unit(question: str) -> str | None:
    """The unit the answer to `question` is in: "dollars" when it asks for money, the word
    after "how many" when it is a unit; None otherwise."""
    if re.search(r"\bhow much (?:money|did|does|will|would|do|is|was)\b", question, re.IGNORECASE) and "$" in question:
        return "dollars"
    m = _UNIT_OF_QUESTION.search(question)
    if m and m.group(1) in _UNITS:
        return m.group(1)
    if re.search(r"\bin degrees\b", question):
        return "degrees"
    return None
