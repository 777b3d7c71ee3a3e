"""Readers for code datasets: each row becomes a `Problem` with kind="code" and tests.

`pillion.data.read` detects these formats from a file's fields, as it does the math ones:

    humaneval      task_id, prompt (signature + docstring), entry_point, canonical_solution,
                   test (a `check(candidate)` function)
    mbpp           text (or the sanitized set's prompt), code, test_list (asserts),
                   test_setup_code / test_imports (run before the asserts)
    apps           question, input_output {"inputs": [...], "outputs": [...], "fn_name"?},
                   possibly JSON-encoded; solutions, starter_code, difficulty. APPS and TACO
    codecontests   description, public_tests / private_tests {"input": [...], "output": [...]}
    livecodebench  question_content, public_test_cases / private_test_cases (JSON lists of
                   {input, output, testtype}; the private ones possibly base64(zlib(pickle(json)))
                   as in code_generation_lite), starter_code, metadata {"func_name"}

What a row becomes (tests are the sandbox's two kinds, see `pillion.rewards.code`):
- HumanEval: question = the prompt; one test, `test` + `check(<entry_point>)` (all or nothing,
  as HumanEval grades); meta["code_prefix"] = the prompt, so both answer styles are graded (a
  whole function in a ```python block, or a completion that continues the prompt).
- MBPP: question = the text, then the asserts ("Your code should pass these tests:", the
  original paper's prompt: the asserts name the function); one test per assert.
- stdin/stdout rows: one {"input", "output"} test per pair; inputs and outputs given as lists
  of lines are joined with newlines. Call-based rows (APPS/TACO `fn_name`, LiveCodeBench
  "functional" tests) become asserts calling the function (`Solution().<name>` when the
  starter code defines `class Solution`), and the starter code is appended to the question.
  CodeContests' generated_tests are not used (hundreds per problem; public + private are
  what the paper reports with); their count is kept in meta.
- `solution` (for SFT) is a reference solution as a ```python block when the row has one.
- `level`: APPS introductory/interview/competition -> 1/2/3; TACO EASY..VERY_HARD -> 1..5;
  LiveCodeBench easy/medium/hard -> 1/2/3; otherwise None (the raw value stays in meta).

A row that cannot become a problem (a missing field, tests that are not JSON, no tests at all,
inputs and outputs of different lengths) raises `DataError` naming file, row and field, or is
skipped and listed with `on_error="skip"`, as in `formats.py`.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from typing import Any

from pillion.data import rows
from pillion.problem import Problem

CODE_FORMATS = ("humaneval", "mbpp", "apps", "codecontests", "livecodebench")

_LEVELS = {"introductory": 1, "interview": 2, "competition": 3, "easy": 1, "medium": 2, "hard": 3,
           "medium_hard": 3, "very_hard": 5}
_TACO_LEVELS = {"EASY": 1, "MEDIUM": 2, "MEDIUM_HARD": 3, "HARD": 4, "VERY_HARD": 5}


def detect_code_format(keys: set[str]) -> str | None:
    """The code format whose fields `keys` (the union over the first rows) has, else None."""
    if {"prompt", "entry_point", "test"} <= keys:
        return "humaneval"
    if "test_list" in keys and keys & {"text", "prompt"}:
        return "mbpp"
    if "input_output" in keys and keys & {"question", "problem"}:
        return "apps"
    if "description" in keys and keys & {"public_tests", "private_tests"}:
        return "codecontests"
    if "question_content" in keys and keys & {"public_test_cases", "private_test_cases"}:
        return "livecodebench"
    return None


def _fenced(code: str) -> str:
    return "```python\n" + code.rstrip("\n") + "\n```"


def _decoded(value: Any, field: str) -> Any:
    """A field that may hold JSON text (or, for LiveCodeBench, base64(zlib(pickle(JSON))))."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        inner = _StringOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value, validate=True)))).load()
        if isinstance(inner, str):
            return json.loads(inner)
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError, json.JSONDecodeError):
        pass
    raise rows.RowError(field, "not JSON (nor base64(zlib(pickle(JSON))))")


class _StringOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles a JSON string; refusing every global keeps a crafted file from
    running code (pickle only calls what find_class returns)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only a pickled string is expected")


def _lines(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise rows.RowError(field, f"expected a string or a list of lines, got {type(value).__name__}")


def _stdio_tests(inputs: Any, outputs: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise rows.RowError(field, "expected lists of inputs and outputs")
    if len(inputs) != len(outputs):
        raise rows.RowError(field, f"{len(inputs)} inputs but {len(outputs)} outputs")
    return [{"input": _lines(i, field), "output": _lines(o, field)} for i, o in zip(inputs, outputs)]


def _call(fn_name: str, starter_code: str) -> str:
    """How a test calls the solution: LeetCode-style starter code wraps it in class Solution."""
    return f"Solution().{fn_name}" if "class Solution" in starter_code else fn_name


def _call_test(call: str, args: Any, expected: Any, unwrap: bool) -> str:
    """An assert that `call(*args)` returns `expected`. With `unwrap` (APPS/TACO, whose
    call-based outputs are often wrapped in a one-element list, as their own checker allows)
    `[result] == expected` also passes; tuples compare as lists there too."""
    args = args if isinstance(args, list) else [args]
    lines = [f"_result = {call}(*{args!r})"]
    if unwrap:
        lines.append("_result = list(_result) if isinstance(_result, tuple) else _result")
        lines.append(f"assert _result == {expected!r} or [_result] == {expected!r}")
    else:
        lines.append(f"assert _result == {expected!r}")
    return "\n".join(lines)


def _with_starter(question: str, starter_code: str | None) -> str:
    return question if not starter_code else f"{question}\n\nStarter code:\n{_fenced(starter_code)}"


def _level(value: Any, table: dict[str, int]) -> int | None:
    if isinstance(value, str):
        return table.get(value) or table.get(value.strip().lower())
    return None


def _parse_humaneval(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    prompt, test, entry = rows.text(row, "prompt"), rows.text(row, "test"), rows.text(row, "entry_point")
    if not entry.isidentifier():
        raise rows.RowError("entry_point", f"not a Python name: {entry!r}")
    canonical = rows.text(row, "canonical_solution", required=False)
    uid = rows.text(row, "task_id", required=False)
    meta = rows.meta(row, ("prompt", "test", "task_id"))
    meta["code_prefix"] = prompt
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=prompt, answer="",
                   solution=_fenced(prompt + canonical) if canonical else None, source=source, kind="code",
                   tests=[f"{test}\n\ncheck({entry})\n"], meta=meta)


def _parse_mbpp(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    key = "text" if "text" in row else "prompt"
    text = rows.text(row, key)
    asserts = row.get("test_list")
    if not isinstance(asserts, list) or not asserts or not all(isinstance(t, str) and t.strip() for t in asserts):
        raise rows.RowError("test_list", "expected a non-empty list of assert statements")
    setup = row.get("test_setup_code") or ""
    imports = row.get("test_imports") or []
    if not isinstance(setup, str) or not isinstance(imports, list):
        raise rows.RowError("test_setup_code", "expected a string (and test_imports a list)")
    before = "\n".join([*imports, setup]).strip()
    tests = [f"{before}\n{t}" if before else t for t in asserts]
    question = f"{text}\nYour code should pass these tests:\n" + "\n".join(asserts)
    code = rows.text(row, "code", required=False)
    uid = rows.text(row, "task_id", required=False)
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=question, answer="",
                   solution=_fenced(code) if code else None, source=source, kind="code", tests=tests,
                   meta=rows.meta(row, (key, "test_list", "code", "task_id")))


def _parse_apps(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    key = "question" if "question" in row else "problem"
    question = rows.text(row, key)
    spec = _decoded(row.get("input_output"), "input_output")
    if not isinstance(spec, dict):
        raise rows.RowError("input_output", "expected an object with inputs and outputs")
    starter = row.get("starter_code") or ""
    if spec.get("fn_name"):
        inputs, outputs = spec.get("inputs"), spec.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise rows.RowError("input_output", "expected equally long lists of inputs and outputs")
        call = _call(str(spec["fn_name"]), starter)
        tests: list[Any] = [_call_test(call, i, o, unwrap=True) for i, o in zip(inputs, outputs)]
    else:
        tests = _stdio_tests(spec.get("inputs"), spec.get("outputs"), "input_output")
    if not tests:
        raise rows.RowError("input_output", "no tests")
    solutions = _decoded(row.get("solutions"), "solutions") if row.get("solutions") else []
    solution = solutions[0] if isinstance(solutions, list) and solutions and isinstance(solutions[0], str) else None
    level = _level(row.get("difficulty"), {**_LEVELS, **_TACO_LEVELS})  # TACO's upper-case names first
    uid = row.get("problem_id", row.get("id"))
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=_with_starter(question, starter),
                   answer="", solution=_fenced(solution) if solution else None, source=source, level=level,
                   kind="code", tests=tests,
                   meta=rows.meta(row, (key, "input_output", "solutions", "problem_id", "id")))


def _parse_codecontests(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "description")
    tests: list[Any] = []
    for field in ("public_tests", "private_tests"):
        value = _decoded(row.get(field), field) if row.get(field) is not None else {"input": [], "output": []}
        if not isinstance(value, dict):
            raise rows.RowError(field, "expected an object with input and output lists")
        tests += _stdio_tests(value.get("input"), value.get("output"), field)
    if not tests:
        raise rows.RowError("public_tests", "no tests (public and private are both empty)")
    solution = None
    solutions = row.get("solutions")
    if isinstance(solutions, dict):  # {"language": [...], "solution": [...]}; 3 is PYTHON3
        for language, code in zip(solutions.get("language") or [], solutions.get("solution") or []):
            if language == 3 and isinstance(code, str):
                solution = code
                break
    meta = rows.meta(row, ("description", "public_tests", "private_tests", "generated_tests", "solutions",
                       "incorrect_solutions", "name"))
    generated = row.get("generated_tests")
    if isinstance(generated, dict) and isinstance(generated.get("input"), list):
        meta["generated_tests_unused"] = len(generated["input"])
    name = rows.text(row, "name", required=False)
    return Problem(id=rows.pid(source, name if name is not None else n), question=question, answer="",
                   solution=_fenced(solution) if solution else None, source=source, kind="code", tests=tests,
                   meta=meta)


def _parse_livecodebench(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "question_content")
    starter = row.get("starter_code") or ""
    metadata = _decoded(row.get("metadata"), "metadata") if row.get("metadata") else {}
    tests: list[Any] = []
    for field in ("public_test_cases", "private_test_cases"):
        cases = _decoded(row.get(field), field) if row.get(field) else []
        if not isinstance(cases, list):
            raise rows.RowError(field, "expected a list of test cases")
        for case in cases:
            if not isinstance(case, dict) or not isinstance(case.get("input"), str) \
                    or not isinstance(case.get("output"), str):
                raise rows.RowError(field, "a test case needs string fields input and output")
            if case.get("testtype") == "functional":
                fn_name = metadata.get("func_name") if isinstance(metadata, dict) else None
                if not fn_name:
                    raise rows.RowError("metadata", "functional tests need metadata.func_name")
                try:
                    args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
                    expected = json.loads(case["output"])
                except json.JSONDecodeError:
                    raise rows.RowError(field, "a functional test's input or output is not JSON") from None
                tests.append(_call_test(_call(fn_name, starter), args, expected, unwrap=False))
            else:
                tests.append({"input": case["input"], "output": case["output"]})
    if not tests:
        raise rows.RowError("public_test_cases", "no tests")
    uid = rows.text(row, "question_id", required=False)
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=_with_starter(question, starter),
                   answer="", source=source, level=_level(row.get("difficulty"), _LEVELS), kind="code",
                   tests=tests, meta=rows.meta(row, ("question_content", "public_test_cases", "private_test_cases",
                                                 "question_id")))


CODE_PARSERS: dict[str, rows.Parser] = {
    "humaneval": _parse_humaneval, "mbpp": _parse_mbpp, "apps": _parse_apps,
    "codecontests": _parse_codecontests, "livecodebench": _parse_livecodebench,
}
