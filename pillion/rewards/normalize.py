"""Normalisation of final answers: the canonical string both graders' paths start from.

`normalize_answer(s)` rewrites one answer (pred or gold, already extracted) without changing
its value: math delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac`/`\\tfrac` -> `\\frac`,
`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`, degrees (`^\\circ`, °, "degrees"), currency
(`\\$`, "dollars", €, £), percent words ("28 percentage" is 28%), `\\text{unit}` after a number
and a list of plain unit words, thousands separators (`1,234`, `1{,}234`, `1\\,234`,
`11,\\! 111`, `1 000`; only when the whole answer is such a number, so the list `1, 234`
stays a list), a trailing backslash, mixed numbers (`3 1/2` means 7/2), relations (`\\geq` =
`>=` = `≥`, `\\lt`, `\\neq` = `!=`), a one-variable inequality as an interval, in any variable
name (a Latin or Greek letter, perhaps with a subscript), written upwards, downwards,
rearranged or negated ("0 < x < 12.5" is (0, 12.5), "x < 3" and "3 > x" are (-\\infty, 3),
"-x < -5" is (5, \\infty), "3 < \\lambda \\le 4" is (3, 4], "x < -1 or x > 2" a union),
`a \\pm b` as the two values a+b, a-b, "and"/"or" between values and ";" between members as
a list comma (in "1,5; 2,25" the commas are decimal commas), `2{,}5` as 2.5 (`{,}` before
exactly three digits is a thousands separator), plain-text math as LaTeX
("pi/2", "sqrt(2)", "exp(16)", "x**2", "inf"), and a whole answer that is a number word
("five", "twenty", "hundred"). Pure string work: regexes without nested
quantifiers over at most a few hundred characters; never `eval`.
"""

from __future__ import annotations

import re

MAX_ANSWER_CHARS = 4000  # longer strings are not normalised (compared as they are)

_UNIT_WORDS = (
    "cm mm km meter meters metre metres inch inches ft foot feet yd yard yards mile "
    "miles mph kmh kg gram grams mg lb lbs pound pounds oz ounce ounces sec second seconds "
    "min minute minutes hr hrs hour hours day days week weeks month months year years "
    "liter liters litre litres ml gallon gallons cup cups dollar dollars cent cents usd euro "
    "euros unit units square sq cubic degree degrees deg people students apples cookies"
).split()
_UNIT_TAIL = re.compile(
    r"^(?P<num>.*?\d[\d.]*%?)\s*(?:(?:" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True))
    + r")\b\.?(?:\^\{?[23]\}?)?\s*)+$",
    re.IGNORECASE,
)
_UNICODE = (("π", "\\pi"), ("∞", "\\infty"), ("√", "\\sqrt"), ("°", "^\\circ"), ("−", "-"), ("×", "\\times"),
            ("·", "\\cdot"), ("÷", "\\div"), ("≤", "\\le "), ("≥", "\\ge "), ("≠", "\\ne "), ("\u2009", " "),
            ("\u202f", " "), ("\u00a0", " "))
# Whole answers that name a set: the reals as an interval, the empty set one way.
_SET_NAMES = {"\\mathbb{R}": "(-\\infty,\\infty)", "\\mathbb R": "(-\\infty,\\infty)", "\\R": "(-\\infty,\\infty)",
              "all real numbers": "(-\\infty,\\infty)", "\\varnothing": "\\emptyset", "\\{\\}": "\\emptyset",
              "\\{ \\}": "\\emptyset", "no solution": "\\emptyset"}
_RELATIONS = ((re.compile(r"\\leq(?:slant)?(?![a-zA-Z])|\\le(?![a-zA-Z])|<="), "\\le "),
              (re.compile(r"\\geq(?:slant)?(?![a-zA-Z])|\\ge(?![a-zA-Z])|>="), "\\ge "),
              (re.compile(r"\\neq?(?![a-zA-Z])|!="), "\\ne "),
              (re.compile(r"\\lt(?![a-zA-Z])"), "<"), (re.compile(r"\\gt(?![a-zA-Z])"), ">"))
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}(\^\{?[23]\}?)?")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
THOUSANDS = re.compile(  # a whole answer that is one number with thousands commas: 1,234.5
    r"^[-+]?(?!0,)\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")
_SPACE_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?%?$")
_MIXED_PLAIN = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")
_FUNCTION_WORDS = re.compile(r"(?<![\\a-zA-Z])(ln|log|sin|cos|tan|sec|csc|cot|arcsin|arccos|arctan)(?=\s*\()")
_CONSTANT_WORDS = ((re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])"), "\\pi"),
                   (re.compile(r"(?<![\\a-zA-Z])(?:infinity|inf|oo)(?![a-zA-Z])"), "\\infty"))


def _call_to_latex(s: str, name: str, make) -> str:
    """Rewrite every plain-text call `name(...)` (parentheses matched) with `make(inner)`."""
    pattern = re.compile(r"(?<![\\a-zA-Z])" + name + r"\s*\(")
    for _ in range(20):  # nested calls are rewritten outermost first
        m = pattern.search(s)
        if not m:
            break
        depth, end = 0, -1
        for j in range(m.end() - 1, len(s)):
            depth += (s[j] == "(") - (s[j] == ")")
            if depth == 0:
                end = j
                break
        if end == -1:
            break
        s = s[: m.start()] + make(s[m.end() : end]) + s[end + 1 :]
    return s


def _plain_math(s: str) -> str:
    """Plain-text and sympy-style math as LaTeX: pi, sqrt(), exp(), **, inf, "+ -"."""
    if "(" in s:
        s = _call_to_latex(s, "sqrt", lambda inner: "\\sqrt{" + inner + "}")
        s = _call_to_latex(s, "exp", lambda inner: "e^{" + inner + "}")
        s = _FUNCTION_WORDS.sub(r"\\\1", s)
    for pattern, new in _CONSTANT_WORDS:
        s = pattern.sub(lambda _m, new=new: new, s)
    s = s.replace("**", "^")
    return re.sub(r"\+\s*-", "-", re.sub(r"-\s*-(?=\s*\d)", "+", s))


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
                      "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000"})


def normalize_answer(s: str) -> str:
    """Canonical string form of an answer (see the module docstring for the rules)."""
    s = s.strip()
    if s.lower().rstrip(".") in _NUMBER_WORDS:  # "five": the whole answer is a number word
        return _NUMBER_WORDS[s.lower().rstrip(".")]
    if len(s) > MAX_ANSWER_CHARS:
        return s  # far too long to be a final answer: exact string comparison only
    for old, new in _UNICODE:
        s = s.replace(old, new)
    # Math delimiters and sizing/spacing commands carry no value.
    if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
        s = s[2:-2]
    s = s.strip().strip("$").strip()
    s = s.replace("\\\\", "\x00")  # protect the row break \\ from the spacing rules below
    s = re.sub(r",\\!\s*", ",", s)  # 11,\! 111: a thousands separator
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\\displaystyle|\\!", "", s)
    s = re.sub(r"\\[;: ]|~|\\q?quad(?![a-zA-Z])", " ", s)
    s = re.sub(r"\\[bB]igg?[lr]?(?![a-zA-Z])", "", s)
    # 1{,}000 and 1\,000 are thousands separators; 2{,}5 (not three digits after it) a decimal comma.
    if "{,}" in s:
        s = re.sub(r"(?<=\d)\{,\}(?=\d(?!\d\d(?!\d)))", ".", s).replace("{,}", "")
    s = s.replace("\\,", "")
    while s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{") : -1].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for pattern, new in _RELATIONS:
        s = pattern.sub(lambda _m, new=new: new, s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    # Degrees, currency, percent.
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = re.sub(r"\\degree\b", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("€", "").replace("£", "")
    s = s.replace("\\%", "%")
    s = re.sub(r"\s*\b(?:percentage|percent)\b", "%", s)
    union = _or_union(s) if len(s) <= 200 else None  # "x < -1 or x > 2"
    s = union or _TEXT_CMD.sub(lambda m: _text_command(m, s), s).strip()
    if len(s) <= 200 and not union:  # bounds the regexes below; longer strings are not "number unit"
        m = _UNIT_TAIL.match(s)
        if m and not re.search(r"[a-zA-Z\\]", m.group("num").replace("\\frac", "")):
            s = m.group("num")
        if re.search(r"\d", s):  # "3 and 5", "3 or 5": a list of answers
            s = re.sub(r"\s+(?:and|or)\s+", ",", s)
        if ";" in s:
            s = _semicolon_list(s)
    s = s.strip().rstrip(".").rstrip("\\").strip()
    s = _plain_math(s)
    mixed = _MIXED_PLAIN.match(s)
    if mixed:
        s = f"{mixed.group(1)}\\frac{{{mixed.group(2)}}}{{{mixed.group(3)}}}"
    if THOUSANDS.match(s):
        s = s.replace(",", "")
    elif _SPACE_THOUSANDS.match(s):
        s = s.replace(" ", "")
    # Whitespace is insignificant in math; in words it separates them, so keep single spaces.
    if re.search(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+|\{[a-zA-Z]*matrix\}|\{array\}", "", s)):
        s = re.sub(r"\s+", " ", s)
    else:  # keep one space where a command meets a letter: "\le x", "\sin x"
        s = re.sub(r"\s+", "", re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x01", s)).replace("\x01", " ")
    s = _SET_NAMES.get(s) or _SET_NAMES.get(s.lower()) or _interval(s) or _plus_minus(s) or s
    return s.replace("\x00", "\\\\")


_DECIMAL_COMMA = re.compile(r"-?\d+,(?:\d{1,2}|\d{4,})%?")


def _semicolon_list(s: str) -> str:
    """"1; 2; 3" and "\\{1; 2\\}" are lists written with semicolons: commas between the members,
    and a comma inside a member that is not a thousands separator is a decimal comma
    ("1,5; 2,25" is 1.5 and 2.25)."""
    braces = s.startswith("\\{") and s.endswith("\\}")
    parts = split_top_level(s[2:-2] if braces else s, ";")
    if len(parts) < 2 or not all(parts):
        return s
    joined = ",".join(p.replace(",", ".") if _DECIMAL_COMMA.fullmatch(p) else p for p in parts)
    return "\\{" + joined + "\\}" if braces else joined


def _text_command(m: re.Match, s: str) -> str:
    """\\text{...}: after a number, words are a unit and go ("5\\text{ cm}"), "and"/"or"
    become a list comma; elsewhere the braces go and the words stay ("\\text{odd}")."""
    content = m.group(1).strip()
    if re.search(r"[\d}]\s*$", s[: m.start()]):
        if content in ("and", "or", ","):
            return ","
        if re.fullmatch(r"[A-Za-z .]*(?:/[A-Za-z .]*(?:\^\{?\d\}?)?)?", content):
            return ""  # a unit ("cm", "m/s", "m/s^2"), with its ^2 / ^3, if any
    return content + (m.group(2) or "")


_REL_SPLIT = re.compile(r"\s*(<|>|\\le(?![a-zA-Z])|\\ge(?![a-zA-Z]))\s*")
_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma "
         "tau upsilon phi varphi chi psi omega").split()
# A variable name: a Latin letter or a Greek letter command, perhaps with a subscript (x_1, t_{12}).
VARIABLE = re.compile(r"(?:[a-zA-Z]|\\(?:" + "|".join(_GREEK) + r")(?![a-zA-Z]))(?:_\{?[a-zA-Z0-9]+\}?)?")
_GREEK_COMMAND = re.compile(r"\\(?:" + "|".join(_GREEK) + r")(?![a-zA-Z])")


def _is_bound(s: str) -> bool:
    """A number-like interval end: no variable letters outside commands (\\pi, \\sqrt, \\infty),
    no Greek letter (a variable), no "="."""
    return (bool(s) and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s)) and "=" not in s
            and not _GREEK_COMMAND.search(s))


def _negated(s: str) -> str:
    """-s as a string: "-3" -> "3", "\\infty" -> "-\\infty", "2-\\sqrt{3}" -> "-(2-\\sqrt{3})"."""
    if s == "0":
        return s
    if s.startswith("-") and not _top_level_sign(s[1:]):
        return s[1:]
    return "-(" + s + ")" if _top_level_sign(" " + s.lstrip("+")) else "-" + s.lstrip("+")


_FLIP = {"<": ">", "\\le": "\\ge", ">": "<", "\\ge": "\\le"}


def _inequality(s: str) -> tuple[str, str] | None:
    """(variable, interval) of a one-variable inequality in any variable name (x, t, x_1,
    \\lambda): "0<x<12.5" -> ("x", "(0,12.5)"), "x\\ge 3" -> ("x", "[3,\\infty)"); its
    rearranged ("3 < x") and negated ("-x < -3") forms too; None for anything else."""
    if len(s) > 200 or not re.search(r"[<>]|\\[lg]e", s):
        return None
    parts = [p.strip() for p in _REL_SPLIT.split(s.strip())]
    if len(parts) not in (3, 5):
        return None
    negative = [i for i in range(0, len(parts), 2) if parts[i].startswith("-") and VARIABLE.fullmatch(parts[i][1:])]
    if len(negative) == 1:  # -x < -3 is x > 3: every side negated, every relation turned
        parts = [_negated(p) if i % 2 == 0 and i != negative[0] else _FLIP[p] if i % 2 else p[1:]
                 for i, p in enumerate(parts)]
    opening = {"<": "(", "\\le": "["}
    closing = {"<": ")", "\\le": "]"}
    if len(parts) == 3:
        left, op, right = parts
        if VARIABLE.fullmatch(right) and _is_bound(left):  # 3 < x is x > 3
            left, op, right = right, _FLIP[op], left
        if not (VARIABLE.fullmatch(left) and _is_bound(right)):
            return None
        if op in closing:  # x < b
            return left, "(-\\infty," + right + closing[op]
        return left, opening[_FLIP[op]] + right + ",\\infty)"  # x > a
    a, op1, var, op2, b = parts
    if not (VARIABLE.fullmatch(var) and _is_bound(a) and _is_bound(b)):
        return None
    if op1 not in closing and op2 not in closing:  # b > x > a, written downwards
        a, b, op1, op2 = b, a, _FLIP[op2], _FLIP[op1]
    if op1 in closing and op2 in closing:
        return var, opening[op1] + a + "," + b + closing[op2]
    return None


_ANY_INEQUALITY = re.compile(r"[<>≤≥]|\\[lg](?:eq?|eqslant|t)(?![a-zA-Z])")


def inequality_variable(s: str) -> str | None:
    """The variable of `s` when `s` (normalised) is a one-variable inequality or a union of
    them ("x < -1 or x > 2"), else None."""
    if not _ANY_INEQUALITY.search(s):
        return None
    for pattern, new in _RELATIONS:
        s = pattern.sub(lambda _m, new=new: new, s)
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])|\$", "", s.replace("≤", "\\le ").replace("≥", "\\ge "))
    found = [_inequality(p) for p in re.split(r"\s+or\s+|\\text\{\s*or\s*\}", s)]
    return found[0][0] if all(found) and len({f[0] for f in found}) == 1 else None


def _interval(s: str) -> str | None:
    found = _inequality(s)
    return found[1] if found else None


def _top_level_sign(s: str) -> bool:
    """Whether `s` has a + or - outside brackets after its first character."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0 and i > 0 and ch in "+-" and s[i - 1] not in "^_":
            return True
    return False


def _plus_minus(s: str) -> str | None:
    """"\\pm\\sqrt{2}" -> "\\sqrt{2},-\\sqrt{2}"; "1\\pm\\sqrt{5}" -> "1+\\sqrt{5},1-\\sqrt{5}": two values,
    when the one \\pm is outside brackets and followed by a single term."""
    if s.count("\\pm") != 1 or "=" in s:
        return None
    before, after = s.split("\\pm")
    if not after or not _balanced(before) or _top_level_sign(after) or _top_level_sign(" " + before.lstrip("-")):
        return None
    return f"{after},-{after}" if not before else f"{before}+{after},{before}-{after}"


def _or_union(s: str) -> str | None:
    """"x < -1 or x > 2" -> "(-\\infty,-1)\\cup(2,\\infty)"; None unless every part is an
    inequality in the same variable."""
    parts = re.split(r"\s+or\s+|\\text\{\s*or\s*\}", s)
    if len(parts) < 2:
        return None
    found = [_inequality(p) for p in parts]
    if any(f is None for f in found) or len({f[0] for f in found}) != 1:
        return None
    return "\\cup".join(f[1] for f in found)


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside (), [], {} (an interval "[0,1)" counts as a bracket pair)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif s.startswith(sep, i) and depth == 0:
            parts.append(s[start:i])
            start = i + len(sep)
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0
