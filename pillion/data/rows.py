"""The row vocabulary every dataset parser shares: its error, field readers and id scheme.

A parser is a function `(row, row number, source) -> Problem` (`Parser`) that reads one raw
record of a public dataset; `math_formats.py` and `code_formats.py` hold one per format, and
`formats.py` reads files and runs them. A parser reads fields with the helpers here and
raises `RowError` naming the field; the reader attaches the file and row number (`DataError`)
or, with on_error="skip", lists the row as skipped.

    text(row, "question")            a non-empty string field (numbers become strings)
    level(row)                       3, "3" and "Level 3" all give 3; absent or "Level ?" give None
    meta(row, used)                  the fields a parser did not use, kept in Problem.meta
    pid(source, key)                 "{source}/{key}": ids are stable across reads
    check_tests(problem)             a code problem's Python tests compile (never run: the sandbox runs code)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pillion.problem import Problem

Parser = Callable[[Any, int, str], Problem]  # (row, row number, source) -> Problem, raising RowError


class RowError(Exception):
    """Raised by a row parser; the reader attaches path and row number (`formats.DataError`)."""

    def __init__(self, field: str | None, message: str, missing_answer: bool = False):
        super().__init__(message)
        self.field, self.message, self.missing_answer = field, message, missing_answer


def as_dict(row: Any) -> dict:
    """The row itself when it is an object; RowError otherwise."""
    if not isinstance(row, dict):
        raise RowError(None, f"expected an object, got {type(row).__name__}")
    return row


def text(row: dict, key: str, required: bool = True) -> str | None:
    """A non-empty string field (numbers are turned into strings)."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(key, "missing or empty")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(key, f"expected a string, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON "\ud800": a lone surrogate no tokenizer can encode
            raise RowError(key, f"not valid Unicode text (lone surrogate {value[e.start]!r} at character "
                                f"{e.start})") from None
    return value if isinstance(value, str) else str(value)


_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(-?\d+)\s*$", re.IGNORECASE)


def level(row: dict, key: str = "level") -> int | None:
    """Difficulty as an int: 3, "3" and "Level 3" all give 3; absent or "Level ?" give None."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _LEVEL_RE.match(value)
        if m:
            return int(m.group(1))
        if value.strip().lower() in ("", "level ?", "?"):  # a few hendrycks MATH rows say "Level ?"
            return None
    raise RowError(key, f"cannot parse level {value!r}")


def meta(row: dict, used: tuple[str, ...]) -> dict[str, Any]:
    """The row's fields other than `used`, for Problem.meta."""
    return {k: v for k, v in row.items() if k not in used}


def pid(source: str, key: Any) -> str:
    """A problem id: `{source}/{key}`, key being the row's own unique id or its row number."""
    return f"{source}/{key}"


def check_tests(problem: Problem) -> Problem:
    """A code problem whose Python tests (asserts, a `check(...)` program) do not compile is a bad
    row, found at load: graded, every answer would fail it and score 0, as if wrong. The tests
    are only compiled (`compile`), never executed; stdin/stdout tests are data and pass."""
    for i, test in enumerate(problem.tests, start=1):
        if not isinstance(test, str):
            continue
        try:
            compile(test, f"test {i}", "exec")
        except (SyntaxError, ValueError) as e:  # ValueError: a null byte in the source
            detail = f"{e.msg}, line {e.lineno}" if isinstance(e, SyntaxError) else str(e)
            raise RowError("tests", f"test {i} does not compile ({type(e).__name__}: {detail})") from None
    return problem
