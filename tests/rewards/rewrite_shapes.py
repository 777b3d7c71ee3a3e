r"""Rewrites of one gold answer, by its shape: `rewrites(gold, question, rng)`.

Shapes of MATH-500 and GSM8K golds: integers, decimals, fractions, radicals, polynomials,
complex numbers, tuples, intervals, unions, lists and sets, matrices, equations, choice
letters, words, numbers in a base, numbers with units, degrees or a dollar sign. Each gives
EQUAL rewrites and NOT EQUAL near misses (kinds in tests/rewards/rewrites.py's docstring),
labelled by construction and checked by `rewrite_values.checked` where a value is computable.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from tests.rewards.rewrite_values import (
    SEPARATOR,
    balanced,
    canonical_latex,
    change_digit,
    checked,
    frac,
    interval_variable,
    number_value,
    question_unit,
    question_variable,
    spaced,
    split_top,
    terminating_decimal,
    trusted_expression,
    with_thousands,
    write_number,
)


@dataclass(frozen=True)
class Rewrite:
    answer: str  # the answer alone, as LaTeX
    equal: bool  # the label
    kind: str  # what was done to the gold


def _number_rewrites(value: Fraction, written: str, rng: random.Random, variable: str) -> list[Rewrite]:
    """A number, written as `written` in the gold (an integer, a decimal or a fraction)."""
    out: list[Rewrite] = []
    p, q = value.numerator, value.denominator
    compact = written.replace(" ", "")
    decimal_gold = "." in compact
    if q == 1 and not decimal_gold:
        if abs(p) >= 1000:
            for sep in rng.sample([",", ",\\!", "{,}", "\\,"], 2):
                out.append(Rewrite(with_thousands(p, sep), True, "thousands"))
            if re.search(r"\d" + SEPARATOR + r"\d", written):
                out.append(Rewrite(str(p), True, "thousands"))
                last = re.split(SEPARATOR, written)[-1]
                out.append(Rewrite(last, False, "part"))  # 1,\!248 -> 248
        a = rng.randint(1, max(1, abs(p) - 1)) if p > 1 else rng.randint(1, 9)
        b = p - a
        out.append(Rewrite(f"{a} + {b} = {p}" if b >= 0 else f"{a} - {-b} = {p}", True, "chain"))
        out.append(Rewrite(f"{a} + {b + 1} = {p + 1}" if b + 1 >= 0 else f"{a} - {-b - 1} = {p + 1}", False, "chain"))
        if abs(p) > 1:
            root = math.isqrt(abs(p)) ** 2 == abs(p)
            out.append(Rewrite(f"{abs(p)}^{{2}}" if root else f"\\sqrt{{{abs(p)}}}", False, "container"))
            out.append(Rewrite(frac(1 if p > 0 else -1, abs(p)), False, "container"))
        out.append(Rewrite(str(p + rng.choice([-1, 1])), False, "off_by_one"))
    elif not decimal_gold:  # a fraction or a mixed number
        command = rng.choice(["\\dfrac", "\\tfrac"]) if "\\dfrac" not in written else "\\frac"
        out.append(Rewrite(frac(p, q, command), True, "dfrac"))
        out.append(Rewrite(f"{p}/{q}", True, "slash"))
        if 0 < abs(p) < 10 and q < 10:
            out.append(Rewrite(("-" if p < 0 else "") + f"\\frac{abs(p)}{q}", True, "short_form"))
        if (decimal := terminating_decimal(value)) is not None:
            out.append(Rewrite(decimal, True, "decimal"))
        if re.fullmatch(r"-?\d+\\(?:d|t)?frac.*", compact):
            out.append(Rewrite(frac(p, q), True, "mixed"))  # the gold is mixed: improper
        elif abs(value) > 1:
            out.append(Rewrite(f"{'-' if p < 0 else ''}{abs(p) // q}\\frac{{{abs(p) % q}}}{{{q}}}", True, "mixed"))
        if p < 0:
            out.append(Rewrite(f"\\frac{{{p}}}{{{q}}}", True, "dfrac"))
        if p != 0 and abs(p) != q:
            out.append(Rewrite(frac(q if p > 0 else -q, abs(p)), False, "swapped_fraction"))
        out.append(Rewrite(str(q), False, "part"))  # the denominator
        out.append(Rewrite(frac(p + q, q), False, "off_by_one"))  # value + 1
    else:  # a decimal
        places = len(compact.split(".")[1])
        out.append(Rewrite(frac(p, q), True, "fraction_of_decimal"))
        out.append(Rewrite(compact.lstrip("+") + "0", True, "trailing_zero"))
        if compact.lstrip("-").startswith("."):
            out.append(Rewrite(compact.replace(".", "0.", 1), True, "leading_zero"))
        elif places:
            out.append(Rewrite(compact.replace(".", ","), True, "decimal_comma"))
        if places >= 2 and round(value, places - 1) != value:
            out.append(Rewrite(terminating_decimal(Fraction(round(value, places - 1))), False, "rounded"))
        out.append(Rewrite(terminating_decimal(value * 10), False, "shifted_point"))
        out.append(Rewrite(terminating_decimal(value + 1), False, "off_by_one"))
    if p != 0:
        out.append(Rewrite(terminating_decimal(-value) if decimal_gold else write_number(-value), False, "sign"))
    out.append(Rewrite(f"{variable} = {written}", True, "assign"))
    digit = change_digit(written, rng)
    if digit is not None and number_value(digit) not in (None, value):
        out.append(Rewrite(digit, False, "digit"))
    return [r for r in out if r.answer]


def _element_forms(element: str, rng: random.Random) -> list[Rewrite]:
    """EQUAL forms and NOT EQUAL near misses of one member of a structure (a number or an
    expression), kinds as for whole answers."""
    value = number_value(element)
    if value is not None:
        forms = _number_rewrites(value, element, rng, "x")
        return [r for r in forms if r.kind in ("dfrac", "slash", "decimal", "fraction_of_decimal", "short_form",
                                                "leading_zero", "digit", "sign", "off_by_one", "swapped_fraction")]
    return [r for r in _expression_rewrites(element, rng)
            if r.kind in ("sympy", "reorder", "plain_text", "sqrt_brace", "dfrac", "radical", "digit", "sign")]


def _reordered_terms(expr) -> str | None:
    import sympy

    if not isinstance(expr, sympy.Add) or len(expr.args) < 2:
        return None
    terms = list(reversed(expr.as_ordered_terms()))
    text = sympy.latex(terms[0])
    for term in terms[1:]:
        written = sympy.latex(term)
        text += " - " + written[1:] if written.startswith("-") else " + " + written
    return text


def _expression_rewrites(gold: str, rng: random.Random, question: str = "") -> list[Rewrite]:
    """An expression (radicals, pi, polynomials, complex numbers). Expanded or factored forms
    only when the question does not ask for one of them."""
    import sympy

    out: list[Rewrite] = []
    expr = trusted_expression(gold)
    if expr is not None and not re.search(r"(?<!\\)[A-Z]", re.sub(r"\\[a-zA-Z]+", "", gold)):
        rendered = sympy.latex(expr, imaginary_unit="i")
        forms = [rendered]
        asks_form = re.search(r"factor|expand|simplif", question, re.IGNORECASE)
        for transform in (sympy.together, sympy.radsimp) if asks_form else (sympy.expand, sympy.factor,
                                                                             sympy.together, sympy.radsimp):
            try:
                forms.append(sympy.latex(transform(expr), imaginary_unit="i"))
            except Exception:
                pass
        if expr.free_symbols == set() and not expr.is_zero and expr.is_real:
            inverse = sympy.radsimp(1 / expr)  # \frac{\sqrt{3}}{3} written \frac{1}{\sqrt{3}}
            if not inverse.is_Rational and "frac" not in sympy.latex(inverse):
                forms.append(f"\\frac{{1}}{{{sympy.latex(inverse)}}}")
        for form in dict.fromkeys(forms):
            if form.replace(" ", "") != gold.replace(" ", ""):
                out.append(Rewrite(form, True, "sympy"))
        if (reordered := _reordered_terms(expr)) is not None:
            out.append(Rewrite(reordered.replace("\\left(", "(").replace("\\right)", ")"), True, "reorder"))
        plain = str(expr).replace("**", "^").replace("I", "i")
        if re.fullmatch(r"[\w+\-*/^() .]+", plain) and plain.replace(" ", "") != gold:
            out.append(Rewrite(plain, True, "plain_text"))
        if not expr.is_zero:
            out.append(Rewrite(sympy.latex(-expr, imaginary_unit="i"), False, "sign"))
            out.append(Rewrite(sympy.latex(expr + 1, imaginary_unit="i"), False, "off_by_one"))
    if short := re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", gold) if re.search(r"\\sqrt\{\d\}", gold) else None:
        out.append(Rewrite(short, True, "sqrt_brace"))
    elif re.search(r"\\sqrt\d", gold):
        out.append(Rewrite(re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", gold), True, "sqrt_brace"))
    if "\\frac" in gold and "\\dfrac" not in gold:
        out.append(Rewrite(gold.replace("\\frac", "\\dfrac"), True, "dfrac"))
    if m := re.fullmatch(r"(\d+)\s*\\sqrt\{?(\d+)\}?", gold):  # c sqrt(m) = sqrt(c^2 m)
        out.append(Rewrite(f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}", True, "radical"))
    digit = change_digit(gold, rng)
    if digit is not None:
        out.append(Rewrite(digit, False, "digit"))
    # Parts of the gold: a radicand, a denominator, an exponent, a coefficient.
    canonical = canonical_latex(gold)
    for m in re.finditer(r"\\sqrt\{([^{}]+)\}", canonical):
        out.append(Rewrite(m.group(1), False, "part"))
    for m in re.finditer(r"\\frac\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}\{([^{}]+)\}", canonical):
        out.append(Rewrite(m.group(1), False, "part"))
    for m in re.finditer(r"\^\{?(\d+)\}?", canonical):
        out.append(Rewrite(m.group(1), False, "part"))
    return _verified(gold, out)


def _verified(gold: str, rewrites: list[Rewrite]) -> list[Rewrite]:
    """Keep the rewrites whose label sympy confirms (or cannot judge: then the construction
    stands only for EQUAL rewrites that change no value, and for every NOT EQUAL one made by
    a change sympy could not read)."""
    kept, seen = [], set()
    for r in rewrites:
        if r.answer in seen or r.answer.replace(" ", "") == gold.replace(" ", ""):
            continue
        verdict = checked(r.answer, gold)
        if verdict is None and r.equal and r.kind in ("sympy", "reorder", "plain_text"):
            continue
        if verdict is not None and verdict != r.equal:
            continue
        seen.add(r.answer)
        kept.append(r)
    return kept


def _members_rewrites(members: list[str], join, rng: random.Random, ordered: bool) -> list[Rewrite]:
    """Rewrites of a tuple / list / interval made by rewriting one member; `join(members)`
    writes the structure."""
    out = []
    k = rng.randrange(len(members))
    for form in _element_forms(members[k], rng):
        out.append(Rewrite(join(members[:k] + [form.answer] + members[k + 1 :]), form.equal, form.kind))
    distinct = [i for i in range(len(members)) if members[i].replace(" ", "") != members[0].replace(" ", "")]
    if distinct:
        i, j = 0, rng.choice(distinct)
        swapped = list(members)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        out.append(Rewrite(join(swapped), not ordered, "tuple_order" if ordered else "set_order"))
    return out


def _interval_rewrites(left: str, right: str, ends: list[str], prefix: str, rng: random.Random,
                       variable: str | None) -> list[Rewrite]:
    """An interval `left a, b right` (after `prefix`, "x \\in " or ""), and the inequality it
    denotes in `variable` (none when the question names no variable for it)."""
    out = []
    a, b = ends

    def write(l_, a_, b_, r_):
        return f"{prefix}{l_}{a_}, {b_}{r_}"

    out.append(Rewrite(f"{prefix}\\left{left} {a}, {b} \\right{right}", True, "left_right"))
    if prefix:
        out.append(Rewrite(write(left, a, b, right), True, "assign"))
    elif variable:
        out.append(Rewrite(f"{variable} \\in {left}{a}, {b}{right}", True, "assign"))
    finite = [side for side, end in (("left", a), ("right", b)) if "infty" not in end]
    for side in finite:
        flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
        l_, r_ = (flip[left], right) if side == "left" else (left, flip[right])
        out.append(Rewrite(write(l_, a, b, r_), False, "interval_end"))
    # The inequality the interval denotes, in the question's variable: as a chain, rearranged
    # (the bound first), negated (-x against -bound).
    lo = {"(": "<", "[": "\\le"}[left]
    hi = {")": "<", "]": "\\le"}[right]
    lo_flip = {"<": ">", "\\le": "\\ge"}[lo]
    hi_flip = {"<": ">", "\\le": "\\ge"}[hi]
    v = variable
    if not v:
        pass
    elif "infty" in a and "infty" not in b:
        out.append(Rewrite(f"{v} {hi} {b}", True, "inequality"))
        out.append(Rewrite(f"{b} {hi_flip} {v}", True, "inequality"))
        out.append(Rewrite(f"-{v} {hi_flip} {_negated(b)}", True, "inequality"))
        out.append(Rewrite(f"{v} {hi_flip} {b}", False, "inequality"))
    elif "infty" in b and "infty" not in a:
        out.append(Rewrite(f"{v} {lo_flip} {a}", True, "inequality"))
        out.append(Rewrite(f"{a} {lo} {v}", True, "inequality"))
        out.append(Rewrite(f"-{v} {lo} {_negated(a)}", True, "inequality"))
        out.append(Rewrite(f"{v} {lo} {a}", False, "inequality"))
    elif "infty" not in a:
        out.append(Rewrite(f"{a} {lo} {v} {hi} {b}", True, "inequality"))
        out.append(Rewrite(f"{b} {hi_flip} {v} {lo_flip} {a}", True, "inequality"))
        wrong = "\\le" if lo == "<" else "<"
        out.append(Rewrite(f"{a} {wrong} {v} {hi} {b}", False, "inequality"))
    finite_ends = [i for i, e in enumerate(ends) if "infty" not in e]
    if finite_ends:
        k = rng.choice(finite_ends)
        for form in _element_forms(ends[k], rng):
            new = list(ends)
            new[k] = form.answer
            out.append(Rewrite(write(left, new[0], new[1], right), form.equal, form.kind))
        out.append(Rewrite(ends[k], False, "part"))
    return out


def _negated(s: str) -> str:
    s = s.strip()
    if s.startswith("-"):
        return s[1:]
    if s == "0":
        return s
    return "-" + (f"({s})" if re.search(r"(?<=.)[+-]", s) else s)


def _interval_parts(s: str) -> tuple[str, str, list[str]] | None:
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s).strip()
    if len(s) < 5 or s[0] not in "([" or s[-1] not in ")]" or not balanced(s[1:-1]):
        return None
    ends = split_top(s[1:-1])
    return (s[0], s[-1], ends) if len(ends) == 2 else None


def _is_interval(gold: str, left: str, right: str, ends: list[str], question: str) -> bool:
    return (left + right != "()" or any("infty" in e for e in ends) or "\\in" in gold
            or bool(re.search(r"interval|domain|range|inequalit|values of", question, re.IGNORECASE)))


def _matrix_rewrites(gold: str, rng: random.Random) -> list[Rewrite]:
    m = re.fullmatch(r"\s*\\begin\{pmatrix\}(.*)\\end\{pmatrix\}\s*", gold, re.DOTALL)
    if not m:
        return []
    rows = [[c.strip() for c in row.split("&")] for row in m.group(1).split("\\\\")]
    columns = len(rows[0])

    def write(cells, env="pmatrix"):
        body = " \\\\ ".join(" & ".join(row) for row in cells)
        if env == "array":
            return f"\\left[\\begin{{array}}{{{'c' * columns}}} {body} \\end{{array}}\\right]"
        if env == "parray":
            return f"\\left(\\begin{{array}}{{{'c' * columns}}} {body} \\end{{array}}\\right)"
        return f"\\begin{{{env}}} {body} \\end{{{env}}}"

    out = [Rewrite(write(rows, "bmatrix"), True, "matrix_form"), Rewrite(write(rows, "array"), True, "matrix_form"),
           Rewrite(write(rows, "parray"), True, "matrix_form")]
    flat = [c for row in rows for c in row]
    k = rng.randrange(len(flat))
    for form in _element_forms(flat[k], rng):
        cells = list(flat)
        cells[k] = form.answer
        out.append(Rewrite(write([cells[i : i + columns] for i in range(0, len(cells), columns)],
                                 rng.choice(["pmatrix", "bmatrix"])), form.equal, form.kind))
    distinct = [i for i in range(len(flat)) if number_value(flat[i]) != number_value(flat[k])]
    if distinct:
        j = rng.choice(distinct)
        cells = list(flat)
        cells[k], cells[j] = cells[j], cells[k]
        out.append(Rewrite(write([cells[i : i + columns] for i in range(0, len(cells), columns)]), False,
                           "tuple_order"))
    return out


_UNIT_SUFFIX = re.compile(r"^(?P<num>.*?)\s*(?P<unit>\^\s*\{?\\circ\}?|\\(?:text|mbox)\{\s*(?P<word>[a-z ]+)\}"
                          r"(?P<power>\^\{?2\}?)?)\s*$")


def _choice_rewrites(letter: str, rng: random.Random) -> list[Rewrite]:
    forms = ["{}", "({})", "\\text{{({})}}", "\\textbf{{({})}}", "\\text{{{}}}", "\\mathrm{{({})}}", "\\textbf{{{}}}"]
    other = rng.choice([c for c in "ABCDE" if c != letter])
    out = [Rewrite(f.format(letter), True, "choice_format") for f in forms]
    out += [Rewrite(f.format(other), False, "choice_format") for f in rng.sample(forms, 3)]
    return out


_TEXT_GOLDS = ["even", "odd", "east", "west", "ellipse", "parabola", "Evelyn", "Navin", "Devon", "Monday", "Sunday"]


def _text_rewrites(word: str, rng: random.Random) -> list[Rewrite]:
    other = rng.choice([w for w in _TEXT_GOLDS if w.lower() != word.lower()])
    return [Rewrite(word, True, "text_form"), Rewrite(f"\\textbf{{{word}}}", True, "text_form"),
            Rewrite(f"\\text{{{other}}}", False, "text_form"), Rewrite(other, False, "text_form")]


def _equation_rewrites(lhs: str, rhs: str, rng: random.Random) -> list[Rewrite]:
    """`y = 2x + 3` (an assignment: its value is the answer) or `5x - 7y + 11z + 4 = 0` (an
    equation: its sides are parts)."""
    if re.fullmatch(r"[a-zA-Z]", lhs):
        return [Rewrite(rhs, True, "assign")] + [Rewrite(f"{lhs} = {r.answer}", r.equal, r.kind)
                                                 for r in _element_forms(rhs, rng)]
    out = [Rewrite(f"{rhs} = {lhs}", True, "swap_sides"), Rewrite(lhs, False, "part"), Rewrite(rhs, False, "part")]
    if digit := change_digit(lhs, rng):
        out.append(Rewrite(f"{digit} = {rhs}", False, "digit"))
    return out


def _union_rewrites(gold: str, question: str, rng: random.Random) -> list[Rewrite]:
    pieces = [p.strip() for p in gold.split("\\cup")]
    parsed = [_interval_parts(p) for p in pieces]
    if not all(parsed):
        return []
    out = [Rewrite(" \\cup ".join(f"\\left{p[0]} {p[2][0]}, {p[2][1]} \\right{p[1]}" for p in parsed), True,
                   "left_right")]
    for k in range(len(pieces)):
        out.append(Rewrite(" \\cup ".join(pieces[:k] + pieces[k + 1 :]), False, "dropped_member"))
    k = rng.randrange(len(pieces))
    a, b = parsed[k][2]
    if "infty" not in a:
        flipped = {"(": "[", "[": "("}[parsed[k][0]] + f"{a}, {b}" + parsed[k][1]
        out.append(Rewrite(" \\cup ".join(pieces[:k] + [flipped] + pieces[k + 1 :]), False, "interval_end"))
    v = interval_variable(question)
    if v and len(parsed) == 2 and "infty" in parsed[0][2][0] and "infty" in parsed[1][2][1]:
        (_, r1, (_, b1)), (l2, _, (a2, _)) = parsed
        op1 = "<" if r1 == ")" else "\\le"
        op2 = ">" if l2 == "(" else "\\ge"
        out.append(Rewrite(f"{v} {op1} {b1} \\text{{ or }} {v} {op2} {a2}", True, "inequality"))
    if digit := change_digit(gold, rng):
        out.append(Rewrite(digit, False, "digit"))
    return out


def _tuple_rewrites(gold: str, members: list[str], rng: random.Random) -> list[Rewrite]:
    def join(ms):
        return "(" + ", ".join(ms) + ")"

    out = [Rewrite(join(members), True, "left_right") if "\\left" in gold
           else Rewrite("\\left( " + ", ".join(members) + " \\right)", True, "left_right")]
    out += _members_rewrites(members, join, rng, ordered=True)
    out.append(Rewrite(rng.choice(members), False, "part"))
    if len(members) >= 3:
        k = rng.randrange(len(members))
        out.append(Rewrite(join(members[:k] + members[k + 1 :]), False, "dropped_member"))
    return out


def _plus_minus_rewrites(gold: str, rng: random.Random) -> list[Rewrite]:
    a, b = (p.strip() for p in gold.split("\\pm"))
    plus, minus = f"{a} + {b}", f"{a} - {b}"
    out = [Rewrite(f"{plus}, {minus}", True, "pm_expanded"), Rewrite(f"{minus}, {plus}", True, "set_order"),
           Rewrite(f"{minus}; {plus}", True, "semicolon"), Rewrite(plus, False, "dropped_member")]
    if digit := change_digit(gold, rng):
        out.append(Rewrite(digit, False, "digit"))
    return out


def _list_rewrites(gold: str, rng: random.Random) -> list[Rewrite]:
    """A set `\\{..\\}` or a bare comma list: order free."""
    braces = gold.startswith("\\{")
    members = split_top(gold[2:-2] if braces else gold)

    def join(ms, braces=braces):
        return ("\\{" + ", ".join(ms) + "\\}") if braces else ", ".join(ms)

    out = _members_rewrites(members, join, rng, ordered=False)
    out.append(Rewrite(join(members, not braces), True, "set_braces"))
    k = rng.randrange(len(members))
    out.append(Rewrite(join(members[:k] + members[k + 1 :]), False, "dropped_member"))
    if not any("\\pm" in m for m in members):
        out.append(Rewrite("; ".join(members), True, "semicolon"))
        out.append(Rewrite("; ".join(members[:k] + members[k + 1 :]), False, "semicolon"))
    return out


def _base_rewrites(digits: str, base: str, rng: random.Random) -> list[Rewrite]:
    out = [Rewrite(f"{digits}_{{{base}}}", True, "base_form")]
    if digit := change_digit(digits, rng):
        out.append(Rewrite(f"{digit}_{{{base}}}", False, "digit"))
    return out


def _shape_rewrites(gold: str, question: str, rng: random.Random) -> list[Rewrite]:
    """The rewrites of `gold` by its shape, the first that applies."""
    bare = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", gold).strip()
    sides = split_top(gold, "=")
    if m := re.fullmatch(r"\\text\{\(?([A-E])\)?\}|\(?([A-E])\)?", gold):
        return _choice_rewrites(m.group(1) or m.group(2), rng)
    if m := re.fullmatch(r"\\text\{\s*([A-Za-z][A-Za-z ]*)\}", gold):
        return _text_rewrites(m.group(1).strip(), rng)
    if _number_core(gold) is not None:
        return _decorated_rewrites(gold, question, rng, question_variable(question))
    if gold.startswith("\\begin{pmatrix}"):
        return _matrix_rewrites(gold, rng)
    if len(sides) == 2:
        return _equation_rewrites(*sides, rng)
    if (m := re.fullmatch(r"([a-zA-Z])\s*\\in\s*(.*)", gold)) and (parts := _interval_parts(m.group(2))):
        return _interval_rewrites(parts[0], parts[1], parts[2], f"{m.group(1)} \\in ", rng, m.group(1)) + [
            Rewrite(m.group(2), True, "assign")]
    if "\\cup" in gold:
        return _union_rewrites(gold, question, rng)
    if (parts := _interval_parts(gold)) is not None and _is_interval(gold, *parts, question):
        return _interval_rewrites(parts[0], parts[1], parts[2], "", rng, interval_variable(question))
    if len(bare) > 2 and bare[0] + bare[-1] == "()" and balanced(bare[1:-1]) and len(split_top(bare[1:-1])) >= 2:
        return _tuple_rewrites(gold, split_top(bare[1:-1]), rng)
    if gold.count("\\pm") == 1 and len(split_top(gold)) == 1 and not gold.startswith("\\{"):
        return _plus_minus_rewrites(gold, rng)
    if (gold.startswith("\\{") and gold.endswith("\\}")) or len(split_top(gold)) >= 2:
        return _list_rewrites(gold, rng)
    if m := re.fullmatch(r"(\d+)_\{?(\d+)\}?", gold):
        return _base_rewrites(m.group(1), m.group(2), rng)
    return _expression_rewrites(gold, rng, question)


def rewrites(gold: str, question: str, rng: random.Random) -> list[Rewrite]:
    """EQUAL rewrites and NOT EQUAL near misses of `gold`, labels checked (rewrites.py)."""
    gold = gold.strip()
    out = _shape_rewrites(gold, question, rng)
    if not out:
        return []
    if _number_core(gold) is None and (s := spaced(gold)) != gold and s.replace(" ", "") == gold.replace(" ", ""):
        out.append(Rewrite(s, True, "spaces"))
    out += _combined(gold, out, rng)
    if re.fullmatch(r"-?\d+", gold):  # integers are most golds: a sample of their near misses
        near = [r for r in out if not r.equal]
        keep = set(map(id, rng.sample(near, min(3, len(near)))))
        out = [r for r in out if r.equal or id(r) in keep]
    return _unique(gold, out)


_COSMETIC = [
    (re.compile(r"\\frac(?=\{)"), r"\\dfrac"),
    (re.compile(r"\\sqrt\{(\d)\}"), r"\\sqrt\1"),
    (re.compile(r"^\((.*)\)$"), lambda m: f"\\left( {m.group(1)} \\right)" if balanced(m.group(1)) else m.group(0)),
    (re.compile(r"(?<=[\w}])\s*([+=])\s*(?=[\w\\(])"), r" \1 "),
    (re.compile(r",\s*"), ", "),
]


def _combined(gold: str, made: list[Rewrite], rng: random.Random) -> list[Rewrite]:
    """Several cosmetic rewrites at once (`\\dfrac`, `\\sqrt2`, `\\left(`, spaces) on top of
    one EQUAL rewrite (still EQUAL), and on top of one near miss (still NOT EQUAL)."""
    out = []
    for equal in (True, False):
        pool = [r for r in made if r.equal == equal and r.kind not in ("chain", "container", "choice_format", "units",
                                                                       "text_form", "plain_text", "decimal_comma")]
        if not pool:
            continue
        base = rng.choice(pool)
        text = base.answer
        for pattern, new in rng.sample(_COSMETIC, 3):
            thousands = re.search(r"\d(?:,|\{,\})\\?!?\d{3}", text)
            if len(text) < 200 and not (pattern.pattern.startswith(",") and thousands):
                text = pattern.sub(new, text)
        if text != base.answer:
            verdict = checked(text, gold)
            if verdict is None or verdict == equal:
                out.append(Rewrite(text, equal, "combined"))
    return out


def _number_core(gold: str) -> tuple[str, str | None, bool, Fraction] | None:
    """(number as written, unit or degrees suffix, dollar sign, value) of a gold that is a
    number with perhaps a dollar sign, degrees or a unit; None otherwise."""
    core, unit, dollar = gold.strip(), None, False
    if core.startswith("\\$"):
        core, dollar = core[2:].strip(), True
    if m := _UNIT_SUFFIX.match(core):
        core, unit = m.group("num").strip(), m.group("unit")
    value = number_value(core)
    return None if value is None else (core, unit, dollar, value)


def _decorated_rewrites(gold: str, question: str, rng: random.Random, variable: str) -> list[Rewrite]:
    """A number, perhaps with a dollar sign, degrees or a unit."""
    core, unit, dollar, value = _number_core(gold)
    out = []
    forms = _number_rewrites(value, core, rng, variable)
    if unit or dollar:
        def decorate(answer: str) -> str:
            return ("\\$" if dollar else "") + answer + (unit if unit and unit.startswith("^") else
                                                         (" " + unit if unit else ""))

        out += [Rewrite(decorate(r.answer), r.equal, r.kind) for r in forms
                if r.kind in ("digit", "off_by_one", "sign", "thousands", "trailing_zero", "decimal_comma", "dfrac")]
        out.append(Rewrite(core, True, "units"))
        if unit and unit.startswith("^"):
            out += [Rewrite(f"{core}^{{\\circ}}", True, "units"), Rewrite(f"{core}°", True, "units"),
                    Rewrite(f"{core}\\text{{ degrees}}", True, "units")]
        elif unit:
            word = re.search(r"\{\s*([a-z ]+)\}", unit).group(1).strip()
            out.append(Rewrite(f"{core}\\text{{ {word}}}" + ("^2" if "^" in unit else ""), True, "units"))
        if dollar:
            out += [Rewrite(f"{core}\\text{{ dollars}}", True, "units")]
            if (plain := terminating_decimal(value)) and plain != core:
                out.append(Rewrite(f"\\${plain}", True, "units"))
        return out
    out += forms
    unit = question_unit(question)
    if unit == "dollars":
        out += [Rewrite(f"\\${core}", True, "units"), Rewrite(f"{core} \\text{{ dollars}}", True, "units")]
    elif unit == "degrees":
        out += [Rewrite(f"{core}^\\circ", True, "units"), Rewrite(f"{core}\\text{{ degrees}}", True, "units")]
    elif unit:
        out += [Rewrite(f"{core}\\text{{ {unit}}}", True, "units"), Rewrite(f"{core} \\text{{{unit}}}", True, "units")]
        digit = change_digit(core, rng)
        if digit and number_value(digit) != value:
            out.append(Rewrite(f"{digit}\\text{{ {unit}}}", False, "units"))
    return out


def _unique(gold: str, out: list[Rewrite]) -> list[Rewrite]:
    """Drop repeats and rewrites identical to the gold; an EQUAL and a NOT EQUAL rewrite with
    the same text would be a contradiction: both go."""
    labels: dict[str, set[bool]] = {}
    for r in out:
        labels.setdefault(r.answer, set()).add(r.equal)
    seen, kept = set(), []
    for r in out:
        if r.answer in seen or len(labels[r.answer]) > 1 or r.answer.strip() == gold:
            continue
        seen.add(r.answer)
        kept.append(r)
    return kept
