"""Equivalence of final math answers, bounded in time, safe against model text.

`math_equal(pred, gold)` decides whether a predicted final answer (already extracted, see
`extract.py`) equals the gold one. Two paths:

1. Fast path, in-process, no sympy: both sides are normalised as strings (below); if they
   match, or both are plain numbers / number tuples / intervals / sets / numeric matrices /
   choice letters / words, the verdict is computed here with exact `Fraction` arithmetic.
   Every GSM8K and AIME gold and 398 of the 500 MATH500 golds are plain numbers, so a
   prediction written as a number is graded here, in microseconds.
2. Symbolic path, in a separate worker process: math-verify's LaTeX parser (latex2sympy over
   an ANTLR grammar) builds sympy objects and `math_verify.verify` compares them, followed by
   our own guard for numbers (below); that comparison is `_symbolic_equal` here. The worker
   processes, their timeouts and memory cap, `GradingPool` and `grade_batch` live in
   `pool.py` (this module re-exports `GradingPool` and `grade_batch` for old imports).

Normalisation (both sides): math delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac`/
`\\tfrac` -> `\\frac`, `\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`, degrees (`^\\circ`, °,
"degrees"), currency (`\\$`, "dollars", €, £), `\\text{unit}` after a number and a list of plain
unit words, thousands separators (`1,234,567`, `1{,}234`, `1\\,234`; only when the whole answer
is such a number, so the list `1, 234` stays a list), a leading `x =` when the other side has
no `=`, mixed numbers (`3\\frac{1}{2}`, `3 1/2` mean 7/2), scientific notation (`1.5e3`,
`1.5\\times10^{3}`; never Euler's e), repeating decimals (`0.1\\overline{6}` is 1/6), and
leading zeros (`025` is 25).

Tolerance rule (numbers):
- Integers, fractions and terminating decimals are compared EXACTLY as rationals: 0.5 = 1/2,
  14400 != 14401, 1/2006! != 1/2004!, 0.3 != 0.33. No relative tolerance anywhere.
- A decimal d written with k digits after the point counts as equal to an exact value x that
  cannot be written with k decimals (a non-terminating fraction, or an irrational number such
  as sqrt(2) or pi, evaluated to 50 digits) when |d - x| < 10^-k (rounded or truncated in its
  last digit) AND d has at least 3 significant digits: 0.333 = 1/3, 0.667 = 0.666 = 2/3,
  1.41 = sqrt(2), 3.14 = pi, but 0.33 != 1/3 and 0.3 != 1/3.
- Percent: "50%" equals 50 and equals 0.5 (when exactly one side carries the % sign).
- Any other numeric verdict of math-verify is re-checked: two rationals must be identical and
  two other numbers must agree to a relative 1e-12 at 50 digits (math-verify rounds to 6
  decimals, which makes all tiny numbers equal).

Structures: `\\{..\\}` sets and bare comma lists ("1, 2": all solutions of a "find all") are
compared as multisets, order free; `(a, b)`, `[a, b]`, `[a, b)`, `(a, b]` (tuples, points,
intervals) are compared in order AND with the same bracket at each end; a single value never
equals a list (one root of a "find all" is not the answer). Choice letters: a gold "C" or "(C)"
matches "C", "(C)", "\\text{(C)}", "C) 42". Words: a gold with a word of 3+ letters ("Monday",
"\\text{odd}") is compared as lowercase text in-process and never handed to sympy, which would
read "Monday" as a product of symbols equal to "dynamo".

Safety: model text never reaches `eval`, `exec`, `sympify` or `parse_expr`:
- this module calls none of them; the fast path is regex + `int`/`Fraction` on digit strings;
- the symbolic path calls math-verify with `LatexExtractionConfig` only: its
  `ExprExtractionConfig` would run `sympy.parse_expr`, which is `eval`. LaTeX goes through
  latex2sympy's ANTLR grammar, which builds sympy objects by construction, never by evaluating
  text;
- before the worker sees an answer it must pass `_is_safe_for_sympy`: at most
  `MAX_SYMBOLIC_CHARS` characters of a math alphabet (no quotes, backticks, `#`, `@`, `;`), no
  `__`; otherwise only the exact-string verdict is used;
- the worker (`pool.py`) is a separate process with a memory cap, so even a parser bug costs
  one kill.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pillion.rewards.pool import GradingPool

MAX_SYMBOLIC_CHARS = 400  # longer answers are compared as strings only
MAX_EXPONENT = 400  # 1e400 is parsed exactly; 1e100000 goes to the symbolic path

# ---------------------------------------------------------------------------------------------
# Normalisation (pure string work, shared by both paths)
# ---------------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "cm mm km meter meters metre metres inch inches ft foot feet yd yard yards mile "
    "miles mph kmh kg gram grams mg lb lbs pound pounds oz ounce ounces sec second seconds "
    "min minute minutes hr hrs hour hours day days week weeks month months year years "
    "liter liters litre litres ml gallon gallons cup cups dollar dollars cent cents usd euro "
    "euros unit units square sq cubic degree degrees deg percent people students apples cookies"
).split()
_UNIT_TAIL = re.compile(
    r"^(?P<num>.*?\d[\d.]*)\s*(?:(?:" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True))
    + r")\b\.?(?:\^\{?[23]\}?)?\s*)+$",
    re.IGNORECASE,
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}(\^\{?[23]\}?)?")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGN = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*(?:=|\\in)\s*")
_MIXED_PLAIN = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer (see the module docstring for the rules)."""
    s = s.strip()
    if len(s) > 10 * MAX_SYMBOLIC_CHARS:
        return s  # far too long to be a final answer: exact string comparison only
    for old, new in (("π", "\\pi"), ("∞", "\\infty"), ("√", "\\sqrt"), ("°", "^\\circ"),
                     ("−", "-"), ("×", "\\times"), ("·", "\\cdot"), ("≤", "\\le"), ("≥", "\\ge")):
        s = s.replace(old, new)
    # Math delimiters and sizing/spacing commands carry no value.
    if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    s = s.strip().strip("$").strip()
    s = s.replace("\\\\", "\x00")  # protect the row break \\ from the spacing rules below
    for old in ("\\left", "\\right", "\\displaystyle", "\\!", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(old, " " if old in ("\\;", "\\:", "\\ ", "~") else "")
    s = re.sub(r"\\[bB]igg?[lr]?(?![a-zA-Z])", "", s)
    s = s.replace("{,}", "").replace("\\,", "")  # 1{,}000 and 1\,000 are thousands separators
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{") : -1]
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    # Degrees and currency.
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = re.sub(r"\\degree\b", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("€", "").replace("£", "")
    s = s.replace("\\%", "%").replace("percent", "%")
    s = _TEXT_CMD.sub(lambda m: _text_command(m, s), s).strip()
    if len(s) <= 200:  # bounds the regex below; longer strings are not "number unit"
        m = _UNIT_TAIL.match(s)
        if m and not re.search(r"[a-zA-Z\\]", m.group("num").replace("\\frac", "")):
            s = m.group("num")
        if re.search(r"\d", s):  # "3 and 5", "3 or 5": a list of answers
            s = re.sub(r"\s+(?:and|or)\s+", ",", s)
    s = s.strip().rstrip(".").strip()
    mixed = _MIXED_PLAIN.match(s)
    if mixed:
        s = f"{mixed.group(1)}\\frac{{{mixed.group(2)}}}{{{mixed.group(3)}}}"
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    # Whitespace is insignificant in math; in words it separates them, so keep single spaces.
    if re.search(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+|\{[a-zA-Z]*matrix\}|\{array\}", "", s)):
        s = re.sub(r"\s+", " ", s)
    else:
        s = re.sub(r"\s+", "", s)
    return s.replace("\x00", "\\\\")


def _text_command(m: re.Match, s: str) -> str:
    """\\text{...}: after a number, words are a unit and go ("5\\text{ cm}"), "and"/"or"
    become a list comma; elsewhere the braces go and the words stay ("\\text{odd}")."""
    content = m.group(1).strip()
    if re.search(r"[\d}]\s*$", s[: m.start()]):
        if content in ("and", "or", ","):
            return ","
        if re.fullmatch(r"[A-Za-z .]*", content):
            return ""  # with its ^2 / ^3, if any
    return content + (m.group(2) or "")


# ---------------------------------------------------------------------------------------------
# Exact numbers (fast path)
# ---------------------------------------------------------------------------------------------

class _Num:
    """A number as written: exact value, and for decimal literals the digits after the point."""

    __slots__ = ("value", "decimals", "sig", "percent", "inf")

    def __init__(self, value: Fraction, decimals: int | None = None, sig: int = 0,
                 percent: bool = False, inf: int = 0):
        self.value, self.decimals, self.sig, self.percent, self.inf = value, decimals, sig, percent, inf


_DEC = r"(?:\d+\.?\d*|\.\d+)"
_RE_DECIMAL = re.compile(rf"^([-+]?)({_DEC})$")
_RE_SCI = re.compile(rf"^([-+]?)({_DEC})(?:[eE]|\*10\^|\\times10\^|\\cdot10\^|x10\^)\{{?([-+]?\d+)\}}?$")
_RE_POW10 = re.compile(r"^([-+]?)10\^\{?([-+]?\d+)\}?$")
_RE_SLASH = re.compile(rf"^([-+]?)({_DEC})/({_DEC})$")
_RE_REPEAT = re.compile(r"^([-+]?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_RE_FRAC = re.compile(r"^([-+]?)(\d*)\\frac\{([-+]?)(" + _DEC + r")\}\{(" + _DEC + r")\}$")


def _literal(sign: str, digits: str) -> tuple[Fraction, int | None, int]:
    """Value, decimals (None for integers) and significant digits of a digit string."""
    value = Fraction(digits)
    if sign == "-":
        value = -value
    if "." not in digits:
        return value, None, len(digits.lstrip("0"))
    decimals = len(digits.split(".")[1])
    return value, decimals, len(digits.replace(".", "").lstrip("0"))


def parse_number(s: str) -> _Num | None:
    """Parse a normalised answer that is a plain number; None if it is anything else."""
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    if s in ("\\infty", "+\\infty", "-\\infty", "\\inf", "-\\inf", "oo", "-oo"):
        return _Num(Fraction(0), inf=-1 if s.startswith("-") else 1)
    if len(s) > 200:
        return None
    if m := _RE_DECIMAL.match(s):
        value, decimals, sig = _literal(m.group(1), m.group(2))
        return _Num(value, decimals, sig, percent)
    if m := _RE_SCI.match(s):
        exponent = int(m.group(3))
        if abs(exponent) > MAX_EXPONENT:
            return None
        value, _, _ = _literal(m.group(1), m.group(2))
        return _Num(value * Fraction(10) ** exponent, percent=percent)
    if m := _RE_POW10.match(s):
        exponent = int(m.group(2))
        if abs(exponent) > MAX_EXPONENT:
            return None
        value = Fraction(10) ** exponent
        return _Num(-value if m.group(1) == "-" else value, percent=percent)
    if m := _RE_SLASH.match(s):
        den = Fraction(m.group(3))
        if den == 0:
            return None
        value = Fraction(m.group(2)) / den
        return _Num(-value if m.group(1) == "-" else value, percent=percent)
    if m := _RE_REPEAT.match(s):  # 0.1\overline{6} = 1/6, exactly
        sign, whole, fixed, repeat = m.groups()
        fraction = Fraction(int(fixed or 0)) + Fraction(int(repeat), 10 ** len(repeat) - 1)
        value = int(whole or 0) + fraction / 10 ** len(fixed)
        return _Num(-value if sign == "-" else value, percent=percent)
    if m := _RE_FRAC.match(s):
        sign, whole, inner_sign, num, den = m.groups()
        den = Fraction(den)
        if den == 0 or (whole and inner_sign):
            return None
        value = Fraction(num) / den
        if inner_sign == "-":
            value = -value
        if whole:  # mixed number: 3\frac{1}{2} = 7/2
            value = int(whole) + value
        return _Num(-value if sign == "-" else value, percent=percent)
    return None


def decimal_close(d: Fraction, decimals: int, sig: int, x: Fraction) -> bool:
    """The decimal-approximation rule: x not writable with `decimals` digits, |d - x| < 10^-k,
    and at least 3 significant digits in d (x of an irrational is its 50-digit value)."""
    unit = Fraction(1, 10**decimals)
    if sig < 3 or (x / unit).denominator == 1:
        return False  # too coarse, or x has an exact k-decimal form that d must equal
    return abs(d - x) < unit


def numbers_equal(a: _Num, b: _Num) -> bool:
    """Exact rational equality, the decimal rule, and the one-sided percent rule."""
    if a.inf or b.inf:
        return a.inf == b.inf
    candidates = [(a.value, b.value)]
    if a.percent != b.percent:  # "50%" against 0.5: also try the percent applied
        candidates.append((a.value / 100 if a.percent else a.value, b.value / 100 if b.percent else b.value))
    for x, y in candidates:
        if x == y:
            return True
        if a.decimals is not None and b.decimals is None and decimal_close(x, a.decimals, a.sig, y):
            return True
        if b.decimals is not None and a.decimals is None and decimal_close(y, b.decimals, b.sig, x):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Structures: sets, lists, tuples, intervals, matrices (fast path)
# ---------------------------------------------------------------------------------------------

def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside (), [], {} (an interval "[0,1)" counts as a bracket pair)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def parse_structure(s: str) -> tuple[str, str, list[str]]:
    """(kind, brackets, elements): kind is "set" (order free), "seq" (ordered, brackets
    compared) or "single"."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", "", [e for e in split_top_level(s[2:-2]) if e]
    matrix = re.fullmatch(r"\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}", s, re.DOTALL)
    if matrix:
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        cells = [[c.strip() for c in r.split("&")] for r in rows]
        shape = f"matrix{len(cells)}x{'/'.join(str(len(r)) for r in cells)}"
        return "seq", shape, [c for r in cells for c in r]
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = split_top_level(s[1:-1])
        if len(inner) >= 2 and _balanced(s[1:-1]):
            return "seq", s[0] + s[-1], inner
    parts = split_top_level(s)
    if len(parts) >= 2 and all(parts):
        return "set", "", parts
    return "single", "", [s]


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _multiset_equal(a: list[_Num], b: list[_Num]) -> bool:
    if len(a) != len(b):
        return False
    unused = list(b)
    for x in a:
        for j, y in enumerate(unused):
            if numbers_equal(x, y):
                del unused[j]
                break
        else:
            return False
    return True


_CHOICE = re.compile(r"^\(?([A-J])\)?$")
_CHOICE_PRED = re.compile(r"^\(?([A-Ja-j])\)?(?:$|[\s:.)])")
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "max", "min", "gcd",
               "lcm", "det", "mod", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sqrt",
               "frac", "infty", "cup", "cap", "pmatrix", "bmatrix", "begin", "end", "pi"}


def _text_form(s: str) -> str | None:
    """Lowercased words of a plain-text answer ("Monday", "odd"), else None."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z '\-]*[A-Za-z.]?", s):
        return None
    words = re.findall(r"[A-Za-z]+", s)
    if not any(len(w) >= 3 and w.lower() not in _MATH_WORDS for w in words):
        return None
    return " ".join(w.lower() for w in words)


def fast_equal(pred: str, gold: str) -> bool | None:
    """The in-process verdict on two normalised answers, or None when sympy must decide."""
    if pred == gold:
        return True
    if not pred or not gold:
        return False
    # Multiple choice: a gold letter decides alone (never a sympy symbol).
    if choice := _CHOICE.match(gold):
        letter = _CHOICE_PRED.match(pred)
        return bool(letter) and letter.group(1).upper() == choice.group(1)
    # Plain text: compared as words, case-free; a text gold never reaches sympy.
    if (gold_text := _text_form(gold)) is not None:
        pred_text = _text_form(pred)
        return pred_text is not None and pred_text == gold_text
    # `x = 3` against `3`: drop a single-variable assignment when only one side has one.
    if ("=" in pred) != ("=" in gold) or ("\\in" in pred) != ("\\in" in gold):
        pred, gold = _ASSIGN.sub("", pred, count=1), _ASSIGN.sub("", gold, count=1)
        if pred == gold:
            return True
    a_num, b_num = parse_number(pred), parse_number(gold)
    if a_num is not None and b_num is not None:
        return numbers_equal(a_num, b_num)
    kind_a, brackets_a, elems_a = parse_structure(pred)
    kind_b, brackets_b, elems_b = parse_structure(gold)
    if kind_a != kind_b:
        # A list of numbers never equals a single number ("find all"); other mixes (a tuple
        # against a set, a symbolic list) are left to math-verify.
        if "single" in (kind_a, kind_b) and all(parse_number(e) is not None for e in elems_a + elems_b):
            return False
        return None
    if kind_a == "single":
        return None  # not two plain numbers (checked above): symbolic
    nums_a = [parse_number(e) for e in elems_a]
    nums_b = [parse_number(e) for e in elems_b]
    if any(n is None for n in nums_a + nums_b):
        return None  # symbolic elements: let math-verify look at the whole structure
    if kind_a == "set":
        return _multiset_equal(nums_a, nums_b)
    return (brackets_a == brackets_b and len(nums_a) == len(nums_b)
            and all(numbers_equal(x, y) for x, y in zip(nums_a, nums_b)))


_SAFE_CHARS = re.compile(r"[A-Za-z0-9\s\\{}()\[\]^_+\-*/=<>,.|!:'&%]*")


def _is_safe_for_sympy(s: str) -> bool:
    """The gate before the symbolic worker: a short string over a math alphabet."""
    return len(s) <= MAX_SYMBOLIC_CHARS and "__" not in s and bool(_SAFE_CHARS.fullmatch(s))


def prepare(pred: str | None, gold: str | None) -> tuple[bool | None, str, str]:
    """(in-process verdict or None, normalised pred, normalised gold)."""
    if pred is None or gold is None:
        return False, "", ""
    p, g = normalize_answer(str(pred)), normalize_answer(str(gold))
    verdict = fast_equal(p, g)
    if verdict is None and not (_is_safe_for_sympy(p) and _is_safe_for_sympy(g)):
        verdict = False
    return verdict, p, g


# ---------------------------------------------------------------------------------------------
# Symbolic comparison: runs only inside the worker process
# ---------------------------------------------------------------------------------------------

def _symbolic_equal(pred: str, gold: str) -> bool:
    import sympy
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]

    def parsed(s: str):
        # Wrapped in $...$ so the LaTeX extractor takes the whole answer; no timeout here
        # (the parent's deadline is the timeout, signals would not be thread-safe anyway).
        return parse(f"${s}$", extraction_config=config, parsing_timeout=None)

    gold_parsed, pred_parsed = parsed(gold), parsed(pred)
    if not gold_parsed or not pred_parsed:
        return False
    g, p = gold_parsed[0], pred_parsed[0]
    # The decimal rule against an exact symbolic number (sqrt(2) against 1.414).
    for dec_side, other in ((pred, g), (gold, p)):
        num = parse_number(dec_side)
        if num is not None and num.decimals is not None and _is_number(other):
            if isinstance(other, sympy.Rational):
                return numbers_equal(num, _Num(Fraction(int(other.p), int(other.q))))
            value = sympy.N(other, 50)
            if not value.is_real or not value.is_finite:
                return False
            return decimal_close(num.value, num.decimals, num.sig, Fraction(str(value)))
    if not verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return False
    if _is_number(g) and _is_number(p):
        # math-verify rounds to 6 decimals; re-check: exact for rationals, 1e-12 otherwise.
        if isinstance(g, sympy.Rational) and isinstance(p, sympy.Rational):
            return g == p
        a, b = sympy.N(g, 50), sympy.N(p, 50)
        scale = max(abs(a), abs(b))
        return bool(scale == 0 or abs(a - b) <= scale * sympy.Float("1e-12", 50))
    return True


def _is_number(x) -> bool:
    import sympy

    return isinstance(x, sympy.Expr) and not isinstance(x, sympy.Set) and bool(x.is_number)


def math_equal(pred: str | None, gold: str | None, timeout: float = 5.0,
               pool: GradingPool | None = None) -> bool:
    """True when the final answer `pred` equals `gold` (rules in the module docstring).

    Plain numbers and exact matches are decided in-process; symbolic answers go to a worker
    process (the pool's, or a per-process default one) and count as NOT equal when they take
    longer than `timeout` seconds. None on either side is not equal. Never raises on model text.
    """
    verdict, _, _ = prepare(pred, gold)
    if verdict is not None:
        return verdict
    if pool is None:
        from pillion.rewards.pool import _default_pool  # pool.py imports this module

        pool = _default_pool()
    return pool.grade([pred], [gold], timeout=timeout)[0]


# The worker pool moved to pool.py, which imports this module; these names stay importable
# from here (`from pillion.rewards.math import GradingPool`) without an import cycle.
_MOVED_TO_POOL = ("GradingPool", "grade_batch", "WORKER_MEMORY_BYTES", "WORKER_STARTUP_S")


def __getattr__(name: str):
    if name in _MOVED_TO_POOL:
        from pillion.rewards import pool

        return getattr(pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
