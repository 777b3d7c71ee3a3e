"""Readers that turn public dataset files into `Problem` records.

One entry point, `read(path, format="auto", on_error="raise")`, reads .jsonl, .json and
.parquet files (or a Hugging Face Hub id, when `datasets` is installed) in one of these
formats, each named after the public schema it parses:

    gsm8k    question, answer (the solution, gold after the last "####")
    math     problem, solution, level ("Level 3"), type (gold: last \\boxed{} of the solution)
    math500  problem, answer, solution, subject, level (int or string), unique_id
    numina   problem, solution, source (gold: last \\boxed{} of the solution)
    orz      [{"from": "human", "value": Q}, {"from": "assistant", "ground_truth": {"value": A}}]
    aime     problem, answer, id / year / url
    minerva  problem, solution, idx, type (Minerva's OCW courses set, 272 rows; gold: last
             \\boxed{} of the solution; the course name in `type` is the subject)
    olympiadbench  id, question, final_answer (a list of "$...$" strings), context, solution,
             is_multiple_answer, unit, subfield, ... (OpenBMB/OlympiadBench; gold: the answers
             without "$", joined by ", " when there are several; the unit stays in meta;
             proof problems and problems with images are refused)
    generic  question or prompt, answer; optional solution, level, source, id, kind, tests

and the code formats of `code_formats.py` (humaneval, mbpp, apps, codecontests,
livecodebench), whose rows become kind="code" problems with tests.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pillion.data.problem import Problem
from pillion.errors import UserError
from pillion.rewards.extract import last_boxed as _last_boxed

logger = logging.getLogger("pillion.data")

FORMATS = ("gsm8k", "math", "math500", "numina", "orz", "aime", "minerva", "olympiadbench", "generic",
           "humaneval", "mbpp", "apps", "codecontests", "livecodebench")  # the last five: code_formats.py


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


class _RowError(Exception):
    """Raised by a row parser; `read_with_report` attaches path and row number."""

    def __init__(self, field: str | None, message: str, missing_answer: bool = False):
        super().__init__(message)
        self.field, self.message, self.missing_answer = field, message, missing_answer


# ---------------------------------------------------------------------------------------------
# Gold-answer extraction (the last \boxed{} of a solution: `pillion.rewards.extract.last_boxed`)
# ---------------------------------------------------------------------------------------------

def _gsm8k_gold(text: str) -> str | None:
    """Text after the last '####' of a GSM8K solution, stripped; None if absent or empty."""
    k = text.rfind("####")
    if k < 0:
        return None
    gold = text[k + 4:].strip()
    return gold or None


# ---------------------------------------------------------------------------------------------
# Field helpers shared by the row parsers
# ---------------------------------------------------------------------------------------------

def _text(row: dict, key: str, required: bool = True) -> str | None:
    """A non-empty string field (numbers are turned into strings)."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _RowError(key, "missing or empty")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RowError(key, f"expected a string, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON "\ud800": a lone surrogate no tokenizer can encode
            raise _RowError(key, f"not valid Unicode text (lone surrogate {value[e.start]!r} at character "
                                 f"{e.start})") from None
    return value if isinstance(value, str) else str(value)


_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(-?\d+)\s*$", re.IGNORECASE)


def _level(row: dict, key: str = "level") -> int | None:
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
    raise _RowError(key, f"cannot parse level {value!r}")


def _meta(row: dict, used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def _pid(source: str, key: Any) -> str:
    return f"{source}/{key}"


# ---------------------------------------------------------------------------------------------
# One parser per format: (row, row number, source) -> Problem, raising _RowError
# ---------------------------------------------------------------------------------------------

def _as_dict(row: Any) -> dict:
    if not isinstance(row, dict):
        raise _RowError(None, f"expected an object, got {type(row).__name__}")
    return row


def _parse_gsm8k(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "question")
    solution = _text(row, "answer")
    gold = _gsm8k_gold(solution)
    if gold is None:
        raise _RowError("answer", "no '#### <answer>' line", missing_answer=True)
    return Problem(id=_pid(source, n), question=question, answer=gold, solution=solution,
                   source=source, meta=_meta(row, ("question", "answer")))


def _solution_and_boxed_gold(row: dict) -> tuple[str, str]:
    """(solution, gold) for formats whose gold is the last \\boxed{} of the solution."""
    solution = _text(row, "solution")
    gold = _last_boxed(solution)
    if gold is None or not gold.strip():
        raise _RowError("solution", "no \\boxed{} answer", missing_answer=True)
    return solution, gold


def _parse_math(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    level = _level(row)
    meta = _meta(row, ("problem", "solution", "level"))
    if level is None and row.get("level") is not None:
        meta["level_raw"] = row["level"]
    return Problem(id=_pid(source, n), question=question, answer=gold.strip(), solution=solution,
                   source=source, level=level, meta=meta)


def _parse_math500(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "problem")
    gold = _text(row, "answer", required=False)
    if gold is None:
        raise _RowError("answer", "missing or empty", missing_answer=True)
    uid = _text(row, "unique_id", required=False)
    return Problem(id=_pid(source, uid if uid is not None else n), question=question,
                   answer=gold.strip(), solution=_text(row, "solution", required=False),
                   source=source, level=_level(row),
                   meta=_meta(row, ("problem", "answer", "solution", "level")))


def _parse_numina(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    # Numina's own "source" (olympiads, cn_k12, ...) is where the problem came from; kept in meta.
    # "messages" repeats problem and solution, so it is dropped.
    return Problem(id=_pid(source, n), question=question, answer=gold.strip(), solution=solution,
                   source=source, meta=_meta(row, ("problem", "solution", "messages")))


def _parse_orz(row: Any, n: int, source: str) -> Problem:
    turns = row
    if isinstance(row, dict):  # some copies wrap the turns: {"conversations": [...]}
        turns = row.get("conversations", row.get("messages"))
    if not isinstance(turns, list):
        raise _RowError(None, "expected a list of turns")
    question = gold = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise _RowError(None, "a turn is not an object")
        speaker = turn.get("from", turn.get("role"))
        if speaker in ("human", "user") and question is None:
            question = _text(turn, "value")
        elif speaker in ("assistant", "gpt"):
            truth = turn.get("ground_truth")
            if not isinstance(truth, dict):
                raise _RowError("ground_truth", "assistant turn has no ground_truth object",
                                missing_answer=True)
            gold = _text(truth, "value", required=False)
    if question is None:
        raise _RowError("value", "no human turn with a question")
    if gold is None:
        raise _RowError("ground_truth.value", "missing or empty", missing_answer=True)
    return Problem(id=_pid(source, n), question=question, answer=gold.strip(), source=source)


def _parse_aime(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "problem") if "problem" in row else _text(row, "question")
    gold = _text(row, "answer", required=False)
    if gold is None:
        raise _RowError("answer", "missing or empty", missing_answer=True)
    uid = _text(row, "id", required=False)
    return Problem(id=_pid(source, uid if uid is not None else n), question=question,
                   answer=gold.strip(), solution=_text(row, "solution", required=False),
                   source=source, meta=_meta(row, ("problem", "question", "answer", "solution")))


def _parse_minerva(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    uid = _text(row, "idx", required=False)
    meta = _meta(row, ("problem", "solution", "idx"))
    if "type" in row:  # the course, e.g. "Introduction to Astronomy (8.282J Spring 2006)"
        meta["subject"] = meta.pop("type")
    return Problem(id=_pid(source, uid if uid is not None else n), question=question, answer=gold.strip(),
                   solution=solution, source=source, meta=meta)


def _strip_dollars(answer: str) -> str:
    """The answer inside OlympiadBench's $...$: "$\\frac{1}{2}$" -> "\\frac{1}{2}"."""
    answer = answer.strip()
    while len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    return answer


def _parse_olympiadbench(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    question = _text(row, "question")
    if row.get("answer_type") == "Need_human_evaluate" or row.get("question_type") == "Theorem proof":
        raise _RowError("final_answer", "a proof problem: no final answer to grade", missing_answer=True)
    images = [k for k in sorted(row) if k.startswith("image_") and row[k]]
    if images:
        raise _RowError(images[0], "the problem has an image; text-only models cannot be graded on it")
    finals = row.get("final_answer")
    if isinstance(finals, str):
        finals = [finals]
    if not isinstance(finals, list) or not finals:
        raise _RowError("final_answer", "missing or empty", missing_answer=True)
    answers = [_strip_dollars(str(a)) for a in finals if a is not None]
    if not answers or not all(answers):
        raise _RowError("final_answer", f"empty answer in {finals!r}", missing_answer=True)
    context = _text(row, "context", required=False)
    solution = row.get("solution")
    if isinstance(solution, list):  # one or more worked solutions
        solution = "\n\n".join(str(s) for s in solution) or None
    uid = _text(row, "id", required=False)
    return Problem(id=_pid(source, uid if uid is not None else n),
                   question=f"{context}\n{question}" if context else question,
                   answer=", ".join(answers), solution=solution, source=source,
                   meta=_meta(row, ("question", "final_answer", "solution", "context", "id")))


def _parse_tests(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):  # some sets store the tests JSON-encoded
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [value]
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise _RowError("tests", f"expected a list, got {type(value).__name__}")
    return value


def _parse_generic(row: Any, n: int, source: str) -> Problem:
    row = _as_dict(row)
    key = "question" if "question" in row else "prompt" if "prompt" in row else "problem"
    question = _text(row, key)
    tests = _parse_tests(row.get("tests"))
    kind = row.get("kind") or ("code" if tests else "math")
    if kind not in ("math", "code"):
        raise _RowError("kind", f"expected 'math' or 'code', got {kind!r}")
    solution = _text(row, "solution", required=False)
    gold = _text(row, "answer", required=False)
    if gold is None and solution is not None:
        gold = _last_boxed(solution)
    if kind == "math" and (gold is None or not gold.strip()):
        raise _RowError("answer", "missing or empty", missing_answer=True)
    if kind == "code" and not tests:
        raise _RowError("tests", "a code problem needs tests")
    row_source = _text(row, "source", required=False)
    uid = _text(row, "id", required=False)
    src = source if source != "generic" or row_source is None else row_source
    return Problem(id=_pid(src, uid if uid is not None else n), question=question,
                   answer=(gold or "").strip(), solution=solution, source=src, level=_level(row),
                   kind=kind, tests=tests,
                   meta=_meta(row, (key, "answer", "solution", "level", "source", "id", "kind",
                                    "tests")))


PARSERS: dict[str, Callable[[Any, int, str], Problem]] = {
    "gsm8k": _parse_gsm8k, "math": _parse_math, "math500": _parse_math500,
    "numina": _parse_numina, "orz": _parse_orz, "aime": _parse_aime, "minerva": _parse_minerva,
    "olympiadbench": _parse_olympiadbench, "generic": _parse_generic,
}


def _parsers() -> dict[str, Callable[[Any, int, str], Problem]]:
    """The math parsers above and the code ones (imported here: code_formats imports this module)."""
    from pillion.data.code_formats import CODE_PARSERS

    return {**PARSERS, **CODE_PARSERS}


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
    from pillion.data.code_formats import detect_code_format  # here: code_formats imports this module

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
# File readers: each yields (row number, raw row); unparseable lines become _RowError items
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
                yield n, _RowError(None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, _RowError(None, f"invalid JSON ({e.msg}, column {e.colno})")


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
    parsers = _parsers()
    if format != "auto" and format not in parsers:
        raise ValueError(f"unknown format {format!r}; choose 'auto' or one of {', '.join(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows = [(n, _lower_keys(r)) for n, r in _iter_rows(path, split, subset)]
    if format == "auto":
        format = detect_format([r for _, r in rows if not isinstance(r, _RowError)])
        if format is None:
            bad = next(((n, r) for n, r in rows if isinstance(r, _RowError)), None)
            if bad is not None:  # e.g. a binary file: say what is wrong with its first bad row
                raise DataError(path, bad[0], bad[1].field, bad[1].message)
            first = next((r for _, r in rows if isinstance(r, dict)), {})
            raise DataError(path, None, None,
                            f"cannot tell the format from fields {sorted(first)}; "
                            f"pass format= one of {', '.join(FORMATS)}")
    parse, src = parsers[format], source or format
    report = ReadReport(path=path, format=format, rows=len(rows))
    for n, row in rows:
        try:
            if isinstance(row, _RowError):
                raise row
            report.problems.append(parse(row, n, src))
        except _RowError as e:
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
