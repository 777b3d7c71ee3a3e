r"""Parsers for math datasets: each row becomes a `Problem` with a gold answer string.

`pillion.data.read` detects these formats from a file's fields (`formats.detect_format`); each
is named after the public schema it parses:

    gsm8k    question, answer (the solution, gold after the last "####")
    math     problem, solution, level ("Level 3"), type (gold: last \boxed{} of the solution)
    math500  problem, answer, solution, subject, level (int or string), unique_id
    numina   problem, solution, source (gold: last \boxed{} of the solution)
    orz      [{"from": "human", "value": Q}, {"from": "assistant", "ground_truth": {"value": A}}]
    aime     problem, answer, id / year / url
    minerva  problem, solution, idx, type (Minerva's OCW courses set, 272 rows; gold: last
             \boxed{} of the solution; the course name in `type` is the subject)
    olympiadbench  id, question, final_answer (a list of "$...$" strings), context, solution,
             is_multiple_answer, unit, subfield, ... (OpenBMB/OlympiadBench; gold: the answers
             without "$", joined by ", " when there are several; the unit stays in meta;
             proof problems and problems with images are refused)
    generic  question or prompt, answer; optional solution, level, source, id, kind, tests

Gold answers are kept verbatim (only outer whitespace is stripped); normalisation belongs to
the grader. The last \boxed{} of a solution is `pillion.rewards.extract.last_boxed`, the
grader's own reader, so a gold is found as a prediction would be.
"""

from __future__ import annotations

import json
from typing import Any

from pillion.data import rows
from pillion.problem import Problem
from pillion.rewards.extract import last_boxed


def _gsm8k_gold(text: str) -> str | None:
    """Text after the last '####' of a GSM8K solution, stripped; None if absent or empty."""
    k = text.rfind("####")
    if k < 0:
        return None
    gold = text[k + 4:].strip()
    return gold or None


def _parse_gsm8k(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "question")
    solution = rows.text(row, "answer")
    gold = _gsm8k_gold(solution)
    if gold is None:
        raise rows.RowError("answer", "no '#### <answer>' line", missing_answer=True)
    return Problem(id=rows.pid(source, n), question=question, answer=gold, solution=solution,
                   source=source, meta=rows.meta(row, ("question", "answer")))


def _answer(row: dict) -> str:
    """The `answer` field as the gold, stripped; without one the row lacks an answer (it is not malformed)."""
    gold = rows.text(row, "answer", required=False)
    if gold is None:
        raise rows.RowError("answer", "missing or empty", missing_answer=True)
    return gold.strip()


def _solution_and_boxed_gold(row: dict) -> tuple[str, str]:
    """(solution, gold) for formats whose gold is the last \\boxed{} of the solution."""
    solution = rows.text(row, "solution")
    gold = last_boxed(solution)
    if gold is None or not gold.strip():
        raise rows.RowError("solution", "no \\boxed{} answer", missing_answer=True)
    return solution, gold


def _parse_math(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    level = rows.level(row)
    meta = rows.meta(row, ("problem", "solution", "level"))
    if level is None and row.get("level") is not None:
        meta["level_raw"] = row["level"]
    return Problem(id=rows.pid(source, n), question=question, answer=gold.strip(), solution=solution,
                   source=source, level=level, meta=meta)


def _parse_math500(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "problem")
    gold = _answer(row)
    uid = rows.text(row, "unique_id", required=False)
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=question,
                   answer=gold, solution=rows.text(row, "solution", required=False),
                   source=source, level=rows.level(row),
                   meta=rows.meta(row, ("problem", "answer", "solution", "level")))


def _parse_numina(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    # Numina's own "source" (olympiads, cn_k12, ...) is where the problem came from; kept in meta.
    # "messages" repeats problem and solution, so it is dropped.
    return Problem(id=rows.pid(source, n), question=question, answer=gold.strip(), solution=solution,
                   source=source, meta=rows.meta(row, ("problem", "solution", "messages")))


def _parse_orz(row: Any, n: int, source: str) -> Problem:
    turns = row
    if isinstance(row, dict):  # some copies wrap the turns: {"conversations": [...]}
        turns = row.get("conversations", row.get("messages"))
    if not isinstance(turns, list):
        raise rows.RowError(None, "expected a list of turns")
    question = gold = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise rows.RowError(None, "a turn is not an object")
        speaker = turn.get("from", turn.get("role"))
        if speaker in ("human", "user") and question is None:
            question = rows.text(turn, "value")
        elif speaker in ("assistant", "gpt"):
            truth = turn.get("ground_truth")
            if not isinstance(truth, dict):
                raise rows.RowError("ground_truth", "assistant turn has no ground_truth object",
                                missing_answer=True)
            gold = rows.text(truth, "value", required=False)
    if question is None:
        raise rows.RowError("value", "no human turn with a question")
    if gold is None:
        raise rows.RowError("ground_truth.value", "missing or empty", missing_answer=True)
    return Problem(id=rows.pid(source, n), question=question, answer=gold.strip(), source=source)


def _parse_aime(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "problem") if "problem" in row else rows.text(row, "question")
    gold = _answer(row)
    uid = rows.text(row, "id", required=False)
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=question,
                   answer=gold, solution=rows.text(row, "solution", required=False),
                   source=source, meta=rows.meta(row, ("problem", "question", "answer", "solution")))


def _parse_minerva(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "problem")
    solution, gold = _solution_and_boxed_gold(row)
    uid = rows.text(row, "idx", required=False)
    meta = rows.meta(row, ("problem", "solution", "idx"))
    if "type" in row:  # the course, e.g. "Introduction to Astronomy (8.282J Spring 2006)"
        meta["subject"] = meta.pop("type")
    return Problem(id=rows.pid(source, uid if uid is not None else n), question=question, answer=gold.strip(),
                   solution=solution, source=source, meta=meta)


def _strip_dollars(answer: str) -> str:
    """The answer inside OlympiadBench's $...$: "$\\frac{1}{2}$" -> "\\frac{1}{2}"."""
    answer = answer.strip()
    while len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    return answer


def _parse_olympiadbench(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    question = rows.text(row, "question")
    if row.get("answer_type") == "Need_human_evaluate" or row.get("question_type") == "Theorem proof":
        raise rows.RowError("final_answer", "a proof problem: no final answer to grade", missing_answer=True)
    images = [k for k in sorted(row) if k.startswith("image_") and row[k]]
    if images:
        raise rows.RowError(images[0], "the problem has an image; text-only models cannot be graded on it")
    finals = row.get("final_answer")
    if isinstance(finals, str):
        finals = [finals]
    if not isinstance(finals, list) or not finals:
        raise rows.RowError("final_answer", "missing or empty", missing_answer=True)
    answers = [_strip_dollars(str(a)) for a in finals if a is not None]
    if not answers or not all(answers):
        raise rows.RowError("final_answer", f"empty answer in {finals!r}", missing_answer=True)
    context = rows.text(row, "context", required=False)
    solution = row.get("solution")
    if isinstance(solution, list):  # one or more worked solutions
        solution = "\n\n".join(str(s) for s in solution) or None
    uid = rows.text(row, "id", required=False)
    return Problem(id=rows.pid(source, uid if uid is not None else n),
                   question=f"{context}\n{question}" if context else question,
                   answer=", ".join(answers), solution=solution, source=source,
                   meta=rows.meta(row, ("question", "final_answer", "solution", "context", "id")))


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
        raise rows.RowError("tests", f"expected a list, got {type(value).__name__}")
    return value


def _parse_generic(row: Any, n: int, source: str) -> Problem:
    row = rows.as_dict(row)
    key = "question" if "question" in row else "prompt" if "prompt" in row else "problem"
    question = rows.text(row, key)
    tests = _parse_tests(row.get("tests"))
    kind = row.get("kind") or ("code" if tests else "math")
    if kind not in ("math", "code"):
        raise rows.RowError("kind", f"expected 'math' or 'code', got {kind!r}")
    solution = rows.text(row, "solution", required=False)
    gold = rows.text(row, "answer", required=False)
    if gold is None and solution is not None:
        gold = last_boxed(solution)
    if kind == "math" and (gold is None or not gold.strip()):
        raise rows.RowError("answer", "missing or empty", missing_answer=True)
    if kind == "code" and not tests:
        raise rows.RowError("tests", "a code problem needs tests")
    row_source = rows.text(row, "source", required=False)
    uid = rows.text(row, "id", required=False)
    src = source if source != "generic" or row_source is None else row_source
    return Problem(id=rows.pid(src, uid if uid is not None else n), question=question,
                   answer=(gold or "").strip(), solution=solution, source=src, level=rows.level(row),
                   kind=kind, tests=tests,
                   meta=rows.meta(row, (key, "answer", "solution", "level", "source", "id", "kind",
                                    "tests")))


MATH_PARSERS: dict[str, rows.Parser] = {
    "gsm8k": _parse_gsm8k, "math": _parse_math, "math500": _parse_math500,
    "numina": _parse_numina, "orz": _parse_orz, "aime": _parse_aime, "minerva": _parse_minerva,
    "olympiadbench": _parse_olympiadbench, "generic": _parse_generic,
}
