"""Reading dataset files into `Problem` records: file types, format detection, skipped rows.

One entry point, `read(path, format="auto", on_error="raise")`, reads .jsonl, .json and
.parquet files (or a Hugging Face Hub id, when `datasets` is installed) in one of `FORMATS`:
the math formats of `math_formats.py` (gsm8k, math, math500, numina, orz, aime, minerva,
olympiadbench, generic) and the code formats of `code_formats.py` (humaneval, mbpp, apps,
codecontests, livecodebench), whose rows become kind="code" problems with tests. `FORMATS`
lists the names of their two parser tables, in that order.

`format="auto"` decides from the fields of the first rows. Keys are matched case-
insensitively (some Hub copies of AIME spell them `Problem`, `Answer`, `ID`).

A malformed row is never dropped silently. By default the first one raises `DataError`
naming file, row and field; with `on_error="skip"` bad rows are skipped, logged as one
warning line, and listed in `ReadReport.skipped` (see `read_with_report`).

Row numbers are 1-based positions in the file (for .jsonl the line number). Problem ids are
stable: `{source}/{unique id}` when the row carries one (MATH-500 unique_id, AIME id, a
generic id), else `{source}/{row}`. Gold answers are kept verbatim (only outer whitespace is
stripped); normalisation belongs to the grader.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillion.data.code_formats import CODE_PARSERS, detect_code_format
from pillion.data.math_formats import MATH_PARSERS
from pillion.data.rows import Parser, RowError, check_tests
from pillion.errors import UserError
from pillion.problem import Problem

logger = logging.getLogger("pillion.data")

PARSERS: dict[str, Parser] = {**MATH_PARSERS, **CODE_PARSERS}
FORMATS = tuple(PARSERS)  # the names `format=` accepts besides "auto"


class DataError(UserError):
    """A dataset row (or file) that cannot become a Problem. Carries path, row and field."""

    def __init__(self, path: str, row: int | None, field: str | None, message: str):
        self.path, self.row, self.field, self.message = path, row, field, message
        where = path if row is None else f"{path}, row {row}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


@dataclass
class SkippedRow:
    row: int
    field: str | None
    message: str
    missing_answer: bool = False  # the row was fine except that no gold answer could be found


@dataclass
class ReadReport:
    """What `read_with_report` found: the problems plus every row it skipped and why."""

    path: str
    format: str
    rows: int  # records seen in the file (problems + skipped)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------

def detect_format(rows: list[Any]) -> str | None:
    """Guess the format from the first rows (the union of their keys); None if nothing fits."""
    keys: set[str] = set()
    gsm8k_answers = False
    for row in rows[:50]:
        if isinstance(row, list) or (isinstance(row, dict) and isinstance(
                row.get("conversations", row.get("messages")), list) and "problem" not in row):
            return "orz"
        if isinstance(row, dict):
            keys |= row.keys()
            gsm8k_answers |= isinstance(row.get("answer"), str) and "####" in row["answer"]
    code = detect_code_format(keys)
    if code is not None:
        return code
    if "unique_id" in keys and {"problem", "answer"} <= keys:
        return "math500"
    if {"problem", "solution", "idx"} <= keys and not keys & {"answer", "level"}:
        return "minerva"
    if {"question", "final_answer"} <= keys:
        return "olympiadbench"
    if {"problem", "solution"} <= keys and "answer" not in keys:
        return "math" if "type" in keys else "numina"
    if {"problem", "answer"} <= keys and keys & {"id", "year", "url"} and "tests" not in keys:
        return "aime"
    if {"question", "answer"} <= keys and gsm8k_answers:
        return "gsm8k"
    if keys & {"question", "prompt", "problem"}:
        return "generic"
    return None


# ---------------------------------------------------------------------------------------------
# File readers: each yields (row number, raw row); unparseable lines become RowError items
# ---------------------------------------------------------------------------------------------

def _lower_keys(row: Any) -> Any:
    if isinstance(row, dict):
        return {k.lower() if isinstance(k, str) else k: v for k, v in row.items()}
    return row


def _iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # a binary file, or another encoding
                yield n, RowError(None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, RowError(None, f"invalid JSON ({e.msg}, column {e.colno})")


def _iter_json(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a JSON-lines file named .json, as many Hub exports are
            yield from _iter_jsonl(path)
            return
        raise DataError(path, None, None, f"invalid JSON: {e}") from None
    if isinstance(data, dict):  # {"data": [...]} or a column dict {"question": [...], ...}
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if len(lists) == 1:
            data = next(iter(lists.values()))
        elif lists and len({len(v) for v in lists.values()}) == 1 and len(lists) == len(data):
            names = list(lists)
            data = [dict(zip(names, values)) for values in zip(*lists.values())]
        else:
            raise DataError(path, None, None, "expected a list of records at the top level")
    if not isinstance(data, list):
        raise DataError(path, None, None, "expected a list of records at the top level")
    yield from enumerate(data, start=1)


def _iter_parquet(path: str) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(path, None, None,
                        "reading .parquet needs pyarrow: pip install 'pillion[parquet]'") from None
    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _iter_hub(name: str, split: str, subset: str | None) -> Iterator[tuple[int, Any]]:
    try:
        import datasets  # lazily: only this path needs it, and it needs the network
    except ImportError:
        raise DataError(name, None, None,
                        "not a file; reading it as a Hugging Face Hub dataset needs "
                        "`pip install datasets` (or download the file and pass its path)") from None
    ds = datasets.load_dataset(name, subset, split=split)
    yield from enumerate(ds, start=1)


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _iter_rows(path: str, split: str, subset: str | None) -> Iterator[tuple[int, Any]]:
    if not os.path.exists(path):
        if _HUB_ID.match(path) and not path.endswith((".json", ".jsonl", ".parquet")):
            return _iter_hub(path, split, subset)
        raise DataError(path, None, None, "no such file")
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl(path)
    if suffix == ".json":
        return _iter_json(path)
    if suffix == ".parquet":
        return _iter_parquet(path)
    raise DataError(path, None, None,
                    f"unknown file type '{suffix}' (use .jsonl, .json or .parquet)")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------

def read_with_report(path: str | os.PathLike, format: str = "auto", on_error: str = "raise", *,
                     source: str | None = None, split: str = "train",
                     subset: str | None = None) -> ReadReport:
    """Read a file (or Hub id) into Problems and report every skipped row.

    source: the `Problem.source` and id prefix (default: the format name; for `generic`, each
        row's own `source` field when it has one). Give two files of one format different
        sources (e.g. "gsm8k_train", "gsm8k_test") if their ids must not collide.
    split, subset: only for Hub ids (`datasets.load_dataset(path, subset, split=split)`).
    """
    path = os.fspath(path)
    if format != "auto" and format not in PARSERS:
        raise ValueError(f"unknown format {format!r}; choose 'auto' or one of {', '.join(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows = [(n, _lower_keys(r)) for n, r in _iter_rows(path, split, subset)]
    if format == "auto":
        format = detect_format([r for _, r in rows if not isinstance(r, RowError)])
        if format is None:
            bad = next(((n, r) for n, r in rows if isinstance(r, RowError)), None)
            if bad is not None:  # e.g. a binary file: say what is wrong with its first bad row
                raise DataError(path, bad[0], bad[1].field, bad[1].message)
            first = next((r for _, r in rows if isinstance(r, dict)), {})
            raise DataError(path, None, None,
                            f"cannot tell the format from fields {sorted(first)}; "
                            f"pass format= one of {', '.join(FORMATS)}")
    parse, src = PARSERS[format], source or format
    report = ReadReport(path=path, format=format, rows=len(rows))
    for n, row in rows:
        try:
            if isinstance(row, RowError):
                raise row
            problem = parse(row, n, src)
            report.problems.append(check_tests(problem) if problem.kind == "code" else problem)
        except RowError as e:
            if on_error == "raise":
                raise DataError(path, n, e.field, e.message) from None
            report.skipped.append(SkippedRow(n, e.field, e.message, e.missing_answer))
    if report.skipped:
        shown = ", ".join(str(s.row) for s in report.skipped[:20])
        more = f" (+{len(report.skipped) - 20} more)" if len(report.skipped) > 20 else ""
        logger.warning("%s: skipped %d of %d rows (%s format): rows %s%s; first: %s",
                       path, len(report.skipped), report.rows, format, shown, more,
                       DataError(path, report.skipped[0].row, report.skipped[0].field,
                                 report.skipped[0].message))
    return report


def read(path: str | os.PathLike, format: str = "auto", on_error: str = "raise", *,
         source: str | None = None, split: str = "train",
         subset: str | None = None) -> list[Problem]:
    """Read a dataset into Problem records. See the module docstring and `read_with_report`."""
    return read_with_report(path, format, on_error, source=source, split=split,
                            subset=subset).problems
