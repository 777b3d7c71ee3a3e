"""Equivalence of final math answers: the in-process fast path and the precision rule.

`prepare(pred, gold)` normalises both answers (`normalize.py`) and decides, without sympy,
every pair made of plain numbers, arithmetic on numbers, square roots and pi (`exact.py`),
tuples / intervals / sets / matrices of those, choice letters and words; what is left (None)
goes to `symbolic.py` in a worker process of `pool.py`, where `math_equal` and `GradingPool`
live. This module is pure: no
processes, no sympy, no state. Every GSM8K and AIME gold and most MATH golds are plain
numbers, so a prediction written as a number is graded here, in microseconds.

Before comparing, `align` drops a leading `x =` / `x \\in` from the side that has one when
the other has none (per element: "x_1 = a, x_2 = b" is "a, b"), or from both when both open
with the same one ("x \\in [-2,7)" against "x \\in [-2,7]" compares the intervals, ends
included). A prediction may end a chain of equalities with its value ("7 \\times 6 = 42",
"A = \\pi r^2 = 25\\pi"). An equation that assigns nothing ("5x - 7y + 11z + 4 = 0") is never
equal to a value: not to its side "0", not to its left side. A decimal comma is read as a
point when the gold is one number and the comma is not a thousands separator ("1,22" is
1.22, "1,222" is 1222).

An inequality in any variable name ("3 < \\lambda \\le 4", "x_1 > 3", "-x < -5") equals the
interval it denotes (`normalize.py`); given the question (`prepare(..., question)`), only
when its variable is one of the question's, and never an inequality in another variable
than the gold's.

Numbers: integers, decimals, fractions, mixed numbers (`3\\frac{1}{2}` is 7/2), scientific
notation (`1.5e3`, `1.5\\times10^{3}`; never Euler's e), repeating decimals
(`0.1\\overline{6}` is 1/6), leading zeros (`025` is 25), percent, and arithmetic left in an
answer, evaluated exactly ("0.1 + 0.2" is 0.3, "2^{10}" is 1024, "\\sqrt{8}" is 2\\sqrt{2}).

Precision rule (here and in `symbolic.py`), asymmetric in gold and prediction:
- A gold written as a decimal with k places accepts any prediction that rounds to it:
  |pred - gold| <= 0.5 * 10^-k (gold 3.14 accepts \\pi and 3.1416; gold 0.33 accepts 1/3).
- An exact gold (integer, fraction, radical, \\pi, e) accepts a prediction that contains a
  decimal only within a relative 1e-6, and an exact prediction only when exactly equal:
  3.14 is not \\pi, 0.333 is not 1/3, 0.3333333 is; 14400 is not 14401; 1/2006! is not 1/2004!.
  (This replaces the rule "3 significant digits within the last digit", which took 3.14
  for \\pi.)
- Percent: "50%" equals 50 and equals 0.5 (when exactly one side carries the % sign).

Structures: `\\{..\\}` sets and bare comma (or semicolon) lists ("1, 2", "1; 2": all solutions
of a "find all") are sets: order free, repeats ignored ("\\{1, 2, 2\\}" is "\\{1, 2\\}");
`(a, b)`, `[a, b]`, `[a, b)`, `(a, b]` (tuples, points, intervals) are compared in order AND with
the same bracket at each end; matrices (pmatrix, bmatrix, array) by shape and entry by entry,
each entry under the precision rule; a union of intervals as a set of intervals; a single value
never equals a list (one root of a "find all" is not the answer). Choice letters: a gold "C" or
"(C)" matches the first standalone letter of the prediction ("(C) 42", "for sure C, not A").
Words: a gold with a word of 3+ letters ("Monday", "\\text{odd}") is compared as lowercase text
in-process and never handed to sympy, which would read "Monday" as a product of symbols equal
to "dynamo".

Safety: model text never reaches `eval`, `exec`, `sympify` or `parse_expr`. This module calls
none of them (regexes, `int`, `Fraction` on digit strings, and a small arithmetic parser over
digit tokens); an answer reaches the symbolic worker only through `_is_safe_for_sympy`: at most
`MAX_SYMBOLIC_CHARS` characters of a math alphabet (no quotes, backticks, `#`, `@`, `;`), no
`__`; otherwise only the verdict here is used.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

from pillion.rewards.exact import MAX_EXPONENT, Value, decimal_value, exact_value, rational
from pillion.rewards.normalize import (
    THOUSANDS,
    VARIABLE,
    _balanced,
    inequality_variable,
    normalize_answer,
    split_top_level,
)

MAX_SYMBOLIC_CHARS = 400  # longer answers are compared as strings only
RELATIVE_TOLERANCE = Fraction(1, 10**6)  # a decimal prediction against an exact gold
_ASSIGN = re.compile(r"^(" + VARIABLE.pattern + r")\s*(=|\\in(?![a-zA-Z]))\s*")  # "x =", "x_1 =", "\\lambda \\in"
_IN = re.compile(r"\\in(?![a-zA-Z])")  # membership, not \\infty
_FUNCTION_NAME = re.compile(r"[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\([a-zA-Z, ]*\)")  # f(x), g(a,b)

# ---------------------------------------------------------------------------------------------
# Exact numbers (fast path)
# ---------------------------------------------------------------------------------------------

class _Num:
    """A number as written: its exact value (`value` when rational, else the `exact.py` form
    in `irrational`); `places` = k for a single decimal literal with k digits after the point
    (the precision rule's "gold written as a decimal"); `approx` when a decimal literal
    appears in it at all (a prediction that may be rounded)."""

    __slots__ = ("value", "irrational", "places", "approx", "percent", "inf")

    def __init__(self, value: Fraction | None, places: int | None = None, approx: bool = False,
                 percent: bool = False, inf: int = 0, irrational: Value | None = None):
        self.value, self.places, self.approx, self.percent, self.inf = value, places, approx, percent, inf
        self.irrational = irrational

    def form(self) -> Value:
        return self.irrational if self.value is None else ({(1, 0): self.value} if self.value else {})


_DEC = r"(?:\d+\.?\d*|\.\d+)"
_RE_DECIMAL = re.compile(rf"^([-+]?)({_DEC})$")
_RE_SCI = re.compile(rf"^([-+]?)({_DEC})(?:[eE]|\*10\^|\\times10\^|\\cdot10\^|x10\^)\{{?([-+]?\d+)\}}?$")
_RE_POW10 = re.compile(r"^([-+]?)10\^\{?([-+]?\d+)\}?$")
_RE_SLASH = re.compile(rf"^([-+]?)({_DEC})/({_DEC})$")
_RE_REPEAT = re.compile(r"^([-+]?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_RE_FRAC = re.compile(r"^([-+]?)(\d*)\\frac\{([-+]?)(" + _DEC + r")\}\{(" + _DEC + r")\}$")


def _signed(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def parse_number(s: str) -> _Num | None:
    """Parse a normalised answer that is a plain number, or exact arithmetic on numbers,
    square roots and pi ("0.1+0.2", "2^{10}", "2\\sqrt{3}", "\\frac{5\\pi}{6}"); None if it is
    anything else."""
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    if s in ("\\infty", "+\\infty", "-\\infty"):
        return _Num(Fraction(0), inf=-1 if s.startswith("-") else 1)
    if len(s) > 200:
        return None
    if m := _RE_DECIMAL.match(s):
        digits = m.group(2)
        places = len(digits.split(".")[1]) if "." in digits else None
        return _Num(_signed(m.group(1), Fraction(digits)), places or None, "." in digits, percent)
    if m := _RE_SCI.match(s):
        exponent = int(m.group(3))
        if abs(exponent) > MAX_EXPONENT:
            return None
        value = _signed(m.group(1), Fraction(m.group(2))) * Fraction(10) ** exponent
        return _Num(value, approx="." in m.group(2), percent=percent)
    if m := _RE_POW10.match(s):
        exponent = int(m.group(2))
        if abs(exponent) > MAX_EXPONENT:
            return None
        return _Num(_signed(m.group(1), Fraction(10) ** exponent), percent=percent)
    if m := _RE_SLASH.match(s):
        den = Fraction(m.group(3))
        if den == 0:
            return None
        return _Num(_signed(m.group(1), Fraction(m.group(2)) / den), approx="." in s, percent=percent)
    if m := _RE_REPEAT.match(s):  # 0.1\overline{6} = 1/6, exactly
        sign, whole, fixed, repeat = m.groups()
        fraction = Fraction(int(fixed or 0)) + Fraction(int(repeat), 10 ** len(repeat) - 1)
        return _Num(_signed(sign, int(whole or 0) + fraction / 10 ** len(fixed)), percent=percent)
    if m := _RE_FRAC.match(s):
        sign, whole, inner_sign, num, den = m.groups()
        den = Fraction(den)
        if den == 0 or (whole and inner_sign):
            return None
        value = _signed(inner_sign, Fraction(num) / den)
        if whole:  # mixed number: 3\frac{1}{2} = 7/2
            value = int(whole) + value
        return _Num(_signed(sign, value), approx="." in s, percent=percent)
    form = exact_value(s)  # arithmetic, square roots, pi
    if form is None:
        return None
    value = rational(form)
    return _Num(value, approx="." in s, percent=percent, irrational=None if value is not None else form)


def _irrational_equal(pred: _Num, gold: _Num) -> bool:
    """The precision rule when one side is irrational (\\sqrt{2}, \\pi): exact forms equal, or
    the numeric rules at 50 digits; a percent sign on either side is not taken off here."""
    if pred.percent != gold.percent:
        return False
    a, b = pred.form(), gold.form()
    if a == b:
        return True
    x, y = decimal_value(a), decimal_value(b)
    if gold.places is not None:
        return abs(x - y) * 2 * Decimal(10) ** gold.places <= 1
    return pred.approx and abs(x - y) <= abs(y) * Decimal(RELATIVE_TOLERANCE.numerator) / RELATIVE_TOLERANCE.denominator


def numbers_equal(pred: _Num, gold: _Num) -> bool:
    """The precision rule of the module docstring (asymmetric: `gold` sets the precision)."""
    if pred.inf or gold.inf:
        return pred.inf == gold.inf
    if pred.value is None or gold.value is None:
        return _irrational_equal(pred, gold)
    candidates = [(pred.value, gold.value, gold.places)]
    if pred.percent != gold.percent:  # "50%" against 0.5: also try the percent applied
        places = None if gold.places is None else gold.places + 2 * gold.percent
        candidates.append((pred.value / 100 if pred.percent else pred.value,
                           gold.value / 100 if gold.percent else gold.value, places))
    for p, g, places in candidates:
        if p == g:
            return True
        if places is not None:
            if abs(p - g) * 2 * 10**places <= 1:  # p rounds to the k-place gold
                return True
        elif pred.approx and abs(p - g) <= RELATIVE_TOLERANCE * abs(g):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Structures: sets, lists, tuples, intervals, matrices (fast path)
# ---------------------------------------------------------------------------------------------

_MATRIX = re.compile(r"^[(\[]?\\begin\{(?:([pbB]?matrix)|array)\}(?:\{[lcr|]*\})?(.*)\\end\{(?:\1|array)\}[)\]]?$",
                     re.DOTALL)


def parse_structure(s: str) -> tuple[str, str, list[str]]:
    """(kind, brackets, elements): kind is "set" (order free), "seq" (ordered, brackets
    compared), "matrix" (brackets = shape), "union" (of intervals) or "single"."""
    if s.startswith("\\{") and s.endswith("\\}") and _balanced(s[2:-2]):
        return "set", "", [e for e in split_top_level(s[2:-2]) if e]
    if "\\begin{" in s and (matrix := _MATRIX.match(s)):
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        shape = f"{len(cells)}x{'/'.join(str(len(r)) for r in cells)}"
        return "matrix", shape, [c for r in cells for c in r]
    if "\\cup" in s and len(union := split_top_level(s, "\\cup")) >= 2:
        return "union", "", union
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        inner = split_top_level(s[1:-1])
        if len(inner) >= 2:
            return "seq", s[0] + s[-1], inner
    parts = split_top_level(s)
    if len(parts) >= 2 and all(parts):
        return "set", "", parts
    return "single", "", [s]


def several_values(gold: str, members: list[str] | None = None) -> bool:
    """Whether a gold answer lists several values (a set, a list, "x=1 or x=-2"), as opposed
    to one value, which may itself be a tuple, an interval or a matrix. With `members` (the
    parts of a prediction), a tuple gold also counts when the parts assign its coordinates
    one by one ("x=1", "y=-2" against "(1,-2)")."""
    kind, brackets, elements = parse_structure(normalize_answer(str(gold)))
    if kind == "set" and len(elements) >= 2:
        return True
    return (members is not None and kind == "seq" and brackets == "()" and len(members) == len(elements)
            and all(_ASSIGN.match(m.strip()) for m in members))


def _tree(s: str, depth: int = 0):
    """A normalised answer as nested ("num", _Num) / (kind, brackets, [trees]) nodes, or None
    when any leaf is not a plain number (then sympy compares the whole answer)."""
    if depth > 4:
        return None
    number = parse_number(s)
    if number is not None:
        return ("num", number)
    kind, brackets, elements = parse_structure(s)
    if kind == "single":
        return None
    children = [_tree(e, depth + 1) for e in elements]
    if any(c is None for c in children):
        return None
    return (kind, brackets, children)


def _dedupe(trees: list) -> list:
    """Set elements with exact repeats removed ("\\{1, 2, 2\\}" is "\\{1, 2\\}")."""
    unique: list = []
    for t in trees:
        if not any(_same(t, u) for u in unique):
            unique.append(t)
    return unique


def _same(a, b) -> bool:
    if a[0] == "num" and b[0] == "num":
        return a[1].inf == b[1].inf and (a[1].inf or a[1].form() == b[1].form())
    return a[0] == b[0] and a[1] == b[1] and len(a[2]) == len(b[2]) and all(map(_same, a[2], b[2]))


def _trees_equal(pred, gold) -> bool | None:
    """Compare two trees (the precision rule at the leaves); None when the kinds differ in a
    way sympy may still reconcile (a tuple against a list, a vector against a tuple)."""
    if pred[0] == "num" and gold[0] == "num":
        return numbers_equal(pred[1], gold[1])
    if pred[0] != gold[0]:
        return False if "num" in (pred[0], gold[0]) else None
    kind, children_p, children_g = pred[0], pred[2], gold[2]
    if kind in ("set", "union"):
        children_p, children_g = _dedupe(children_p), _dedupe(children_g)
        if len(children_p) != len(children_g):
            return False
        unused = list(children_g)
        for child in children_p:
            match = next((j for j, g in enumerate(unused) if _trees_equal(child, g)), None)
            if match is None:
                return False
            del unused[match]
        return True
    if pred[1] != gold[1] or len(children_p) != len(children_g):
        return False  # other brackets, another shape
    verdicts = [_trees_equal(p, g) for p, g in zip(children_p, children_g)]
    return None if None in verdicts and False not in verdicts else all(v is True for v in verdicts)


_CHOICE = re.compile(r"^\(?([A-J])\)?$")
_CHOICE_IN_PRED = re.compile(r"(?<![A-Za-z\\])\(?([A-HJ])\)?(?![A-Za-z'’])")
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "max", "min", "gcd",
               "lcm", "det", "mod", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt",
               "frac", "infty", "cup", "cap", "pmatrix", "bmatrix", "begin", "end", "pi", "array"}


def _text_form(s: str) -> str | None:
    """Lowercased words of a plain-text answer ("Monday", "odd"), else None."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z '\-]*[A-Za-z.]?", s):
        return None
    words = re.findall(r"[A-Za-z]+", s)
    if not any((len(w) >= 3 or w.lower() == "no") and w.lower() not in _MATH_WORDS for w in words):
        return None
    return " ".join(w.lower() for w in words)


def _choice_letter(pred: str) -> str | None:
    """The letter a prediction picks: the whole answer ("c", "(C)") or its first standalone
    capital letter ("(B) 42", "for sure D, it can't be A")."""
    if m := re.fullmatch(r"\(?([A-Ja-j])\)?[.:]?", pred):
        return m.group(1).upper()
    m = _CHOICE_IN_PRED.search(pred)
    return m.group(1) if m else None


def _assigned_value(element: str, pred: bool) -> str | None:
    """The value one element assigns: "x=3" -> "3", "f(x)=2x+3" -> "2x+3", "x\\in[-2,7]" ->
    "[-2,7]"; for a prediction also the last side of a chain whose first side is a name
    ("A=\\pi r^2=25\\pi") or whose earlier sides are arithmetic ("7\\times6=42"). None when the
    element is an equation of another kind ("5x-7y+11z+4=0"): its sides are not its value."""
    if "=" not in element:
        m = _ASSIGN.match(element)
        return element[m.end() :] if m else element
    first, *middle, last = element.split("=")
    first = first.strip()
    named = bool(VARIABLE.fullmatch(first) or _FUNCTION_NAME.fullmatch(first))
    if named and (pred or not middle):
        return last
    arithmetic = all(not re.search(r"[a-zA-Z]", re.sub(r"\\(?:frac|sqrt|times|cdot|div|pi)(?![a-zA-Z])", "", side))
                     for side in [first, *middle])
    return last if pred and arithmetic else None


def _strip_assignments(s: str, pred: bool) -> str | None:
    """Per element, the value it assigns (`_assigned_value`): "x_1=1,x_2=-2" -> "1,-2";
    "y=2x+3" -> "2x+3"; "x=10,080" -> "10080" (one prefix before a thousands-separated number).
    None when an element is an equation that assigns nothing."""
    m = _ASSIGN.match(s)
    if m and m.group(2) == "=" and "=" not in s[m.end() :] and THOUSANDS.match(s[m.end() :]):
        return s[m.end() :].replace(",", "")
    values = [_assigned_value(e, pred) for e in split_top_level(s)]
    return None if None in values else ",".join(values)


def _same_prefix(pred: str, gold: str) -> str | None:
    """The "x =" / "x \\in" prefix both answers open with, when each is one element."""
    m, n = _ASSIGN.match(pred), _ASSIGN.match(gold)
    if m and n and m.group(1) == n.group(1) and m.group(2) == n.group(2) and "=" not in pred[m.end() :] \
            and "=" not in gold[n.end() :]:
        return m.group(0)
    return None


def _as_point(pred: str, gold: str) -> str | None:
    """"x=1,y=-2" -> "(1,-2)" against a tuple gold of that size: coordinates in the order of
    their variables (x, y, z; a, b, c), whatever order they were written in."""
    parts = split_top_level(pred)
    kind, brackets, elements = parse_structure(gold)
    if kind != "seq" or brackets != "()" or len(parts) != len(elements) or len(parts) < 2:
        return None
    pairs = [p.split("=", 1) for p in parts]
    names = [name.strip() for name, *_ in pairs]
    if any(len(pair) != 2 or not VARIABLE.fullmatch(name) for pair, name in zip(pairs, names)):
        return None
    if len(set(names)) != len(names):
        return None
    return "(" + ",".join(value.strip() for _, value in sorted(pairs, key=lambda pair: pair[0].strip())) + ")"


def align(pred: str, gold: str, decimal_comma: bool = True) -> tuple[str, str]:
    """Drop `x =` / `x \\in` prefixes from the side that has them when the other side has
    none, or from both when both have the same one (`_strip_assignments`); an equation that
    assigns nothing stays whole. Read a decimal comma ("1,22") as a point when the gold is one
    number and `decimal_comma` (the prediction had no space after a comma: "1, 22" is a list)."""
    if (prefix := _same_prefix(pred, gold)) is not None:
        pred, gold = pred[len(prefix) :], gold[_ASSIGN.match(gold).end() :]
    elif ("=" in pred) != ("=" in gold) or bool(_IN.search(pred)) != bool(_IN.search(gold)):
        if "=" in pred or _IN.search(pred):
            pred = _as_point(pred, gold) or _strip_assignments(pred, True) or pred
        else:
            gold = _strip_assignments(gold, False) or gold
    if (decimal_comma and re.fullmatch(r"-?(?:\d+,(?:\d{1,2}|\d{4,})|0,\d+|\d{4,},\d+)%?", pred)
            and parse_number(gold) is not None):
        pred = pred.replace(",", ".")
    return pred, gold


def fast_equal(pred: str, gold: str) -> bool | None:
    """The in-process verdict on two normalised, aligned answers, or None when sympy must
    decide."""
    if pred == gold:
        return True
    if not pred or not gold:
        return False
    # Multiple choice: a gold letter decides alone (never a sympy symbol).
    if choice := _CHOICE.match(gold):
        return _choice_letter(pred) == choice.group(1)
    # An equation that assigns nothing is never equal to a value: not to one of its sides.
    if ("=" in pred) != ("=" in gold):
        return False
    # Plain text: compared as words, case-free; a text gold never reaches sympy.
    if (gold_text := _text_form(gold)) is not None:
        pred_text = _text_form(pred)
        return pred_text is not None and pred_text == gold_text
    tree_p, tree_g = _tree(pred), _tree(gold)
    if tree_p is not None and tree_g is not None:
        return _trees_equal(tree_p, tree_g)
    # A list of plain numbers never equals a single value ("find all"), and vice versa.
    for lone, listed in ((tree_p, gold), (tree_g, pred)):
        if lone is not None and lone[0] == "num" and parse_structure(listed)[0] == "set":
            return False
    return None


_SAFE_CHARS = re.compile(r"[A-Za-z0-9\s\\{}()\[\]^_+\-*/=<>,.|!:'&%]*")


def _is_safe_for_sympy(s: str) -> bool:
    """The gate before the symbolic worker: a short string over a math alphabet."""
    return len(s) <= MAX_SYMBOLIC_CHARS and "__" not in s and bool(_SAFE_CHARS.fullmatch(s))


def prepare(pred: str | None, gold: str | None, question: str | None = None) -> tuple[bool | None, str, str]:
    """(in-process verdict or None, normalised pred, normalised gold) as the symbolic worker
    should receive them. With the `question`, an inequality stands for its interval only in a
    variable of the question (`variable_of_question`)."""
    if pred is None or gold is None:
        return False, "", ""
    if (variable := inequality_variable(str(pred))) is not None:
        gold_variable = inequality_variable(str(gold))
        if gold_variable not in (None, variable) or (
                gold_variable is None and question is not None and not variable_of_question(variable, question)):
            return False, "", ""
    p, g = align(normalize_answer(str(pred)), normalize_answer(str(gold)), not re.search(r",\s", str(pred)))
    verdict = fast_equal(p, g)
    if verdict is None and not (_is_safe_for_sympy(p) and _is_safe_for_sympy(g)):
        verdict = False
    return verdict, p, g


_QUESTION_MATH = re.compile(r"\$\$?([^$]+)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def variable_of_question(variable: str, question: str) -> bool:
    """Whether `variable` ("x", "x_1", "\\lambda") is a name in the question's math: "3 < \\lambda
    \\le 4" answers "find the values of $\\lambda$", not a question about x. A question without
    math delimiters (a placeholder, a word problem) has nothing to check against: True."""
    spans = [next(filter(None, m.groups())) for m in _QUESTION_MATH.finditer(question)]
    name = re.sub(r"_\{(\w+)\}", r"_\1", variable)
    pattern = re.compile(r"(?<![a-zA-Z\\])" + re.escape(name) + r"(?![a-zA-Z])")
    return not spans or any(pattern.search(re.sub(r"_\{(\w+)\}", r"_\1", span)) for span in spans)


_INDEX_I = re.compile(r"_\{?i\b|(?<![\\a-zA-Z])i\s*=\s*[0-9a-z]|\bfor (?:each|all|every) \$?i\b|\\sum_\{?i")


def imaginary_unit(question: str | None) -> bool:
    """Whether `i` in an answer is the imaginary unit: yes, unless the question uses i as a
    variable or index ("$a_i$", "$i = 1$", "for each $i$") and never mentions "imaginary"."""
    if not question or "imaginary" in question.lower():
        return True
    return not _INDEX_I.search(question)


def graded_in_process(answer: str) -> bool:
    """Whether the grader compares a normalised answer without sympy: a number, a word answer,
    a choice letter, or a tuple, interval, set or matrix of numbers (`fast_equal`'s cases)."""
    if parse_number(answer) is not None or _text_form(answer) is not None or _CHOICE.match(answer):
        return True
    kind, _, elements = parse_structure(answer)
    return kind != "single" and all(parse_number(e) is not None for e in elements)


def safe_for_sympy(answer: str) -> bool:
    """Whether a normalised answer passes the gate before the symbolic worker (length, alphabet)."""
    return _is_safe_for_sympy(answer)
