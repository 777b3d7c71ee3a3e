"""Readers: every format from small fixture files (jsonl, json, parquet), broken rows included."""

import json
import logging

import pytest

from pillion.data.formats import DataError, detect_format, read, read_with_report
from pillion.rewards.extract import last_boxed

GSM8K = [
    {"question": "Ann has 3 apples and buys 2. How many?", "answer": "3+2=<<3+2=5>>5\n#### 5"},
    {"question": "Tom has 1,000 coins and loses 1.", "answer": "1000-1=999\n#### 999 "},
]
MATH = [
    {"problem": "What is $1+1$?", "solution": "Clearly $1+1=\\boxed{2}$.", "level": "Level 1",
     "type": "Prealgebra"},
    {"problem": "Simplify $\\frac{2}{4}$.",
     "solution": "First \\boxed{x}, then $\\boxed{\\frac{1}{2}}$.", "level": "Level 3",
     "type": "Algebra"},
    {"problem": "Odd one.", "solution": "So $\\boxed 7$.", "level": "Level ?", "type": "Algebra"},
]
MATH500 = [
    {"problem": "Find $x$.", "solution": "$\\boxed{3}$", "answer": "3", "subject": "Algebra",
     "level": 2, "unique_id": "test/algebra/1.json"},
    {"problem": "Find $y$.", "solution": "$\\boxed{0.5}$", "answer": "0.5", "subject": "Algebra",
     "level": "4", "unique_id": "test/algebra/2.json"},
]
NUMINA = [
    {"problem": "Compute 2*3.", "solution": "2*3 = 6, so \\boxed{6}.", "source": "olympiads",
     "messages": [{"role": "user", "content": "Compute 2*3."}]},
]
ORZ = [
    [{"from": "human", "value": "What is 2+2?"},
     {"from": "assistant", "ground_truth": {"value": "4"}}],
    [{"from": "human", "value": "What is 3+3?"},
     {"from": "assistant", "ground_truth": {"value": "6"}}],
]
AIME = [
    {"id": 60, "problem": "Find the walk time.", "solution": "...", "answer": "204", "url": "u"},
    {"id": 67, "problem": "Find m+n.", "solution": "...", "answer": "025", "url": "u"},
]
GENERIC = [
    {"question": "What is 5-2?", "answer": 3, "level": 1, "source": "mine", "id": "a"},
    {"prompt": "Write f(x) returning x+1.", "tests": ["assert f(1) == 2"]},
]


def write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_gsm8k_every_file_type(tmp_path, kind):
    path = write(tmp_path / f"g.{kind}", GSM8K, kind)
    problems = read(path)
    assert [p.answer for p in problems] == ["5", "999"]  # verbatim after the last ####, stripped
    assert [p.id for p in problems] == ["gsm8k/1", "gsm8k/2"]
    assert problems[0].solution == GSM8K[0]["answer"] and problems[0].source == "gsm8k"
    assert problems[0].level is None and problems[0].kind == "math"


def test_math_gold_is_last_boxed_and_level_is_int(tmp_path):
    problems = read(write(tmp_path / "m.jsonl", MATH, "jsonl"))
    assert [p.answer for p in problems] == ["2", "\\frac{1}{2}", "7"]
    assert [p.level for p in problems] == [1, 3, None]
    assert problems[1].meta["type"] == "Algebra"
    assert problems[2].meta["level_raw"] == "Level ?"


def test_math500_aime_numina_orz_generic(tmp_path):
    m5 = read(write(tmp_path / "m5.jsonl", MATH500, "jsonl"))
    assert [p.id for p in m5] == ["math500/test/algebra/1.json", "math500/test/algebra/2.json"]
    assert [(p.answer, p.level) for p in m5] == [("3", 2), ("0.5", 4)]
    assert m5[0].meta["subject"] == "Algebra"

    aime = read(write(tmp_path / "a.jsonl", AIME, "jsonl"))
    assert [(p.id, p.answer) for p in aime] == [("aime/60", "204"), ("aime/67", "025")]

    numina = read(write(tmp_path / "n.jsonl", NUMINA, "jsonl"))
    assert numina[0].answer == "6" and numina[0].meta == {"source": "olympiads"}

    orz = read(write(tmp_path / "o.json", ORZ, "json"))
    assert [(p.question, p.answer) for p in orz] == [("What is 2+2?", "4"), ("What is 3+3?", "6")]

    gen = read(write(tmp_path / "g.jsonl", GENERIC, "jsonl"))
    assert (gen[0].id, gen[0].answer, gen[0].source, gen[0].level) == ("mine/a", "3", "mine", 1)
    assert (gen[1].kind, gen[1].tests, gen[1].answer, gen[1].id) == (
        "code", ["assert f(1) == 2"], "", "generic/2")


def test_auto_detection():
    assert detect_format(GSM8K) == "gsm8k"
    assert detect_format(MATH) == "math"
    assert detect_format(MATH500) == "math500"
    assert detect_format(NUMINA) == "numina"
    assert detect_format(ORZ) == "orz"
    assert detect_format(AIME) == "aime"
    assert detect_format(GENERIC) == "generic"
    assert detect_format([{"question": "q", "answer": "4"}]) == "generic"  # no ####: not gsm8k
    assert detect_format([{"foo": 1}]) is None
    # Hub copies with capitalised keys (Maxwell-Jia/AIME_2024) read the same way
    assert detect_format([{"id": "2024-I-1", "problem": "p", "answer": "1"}]) == "aime"


def test_capitalised_keys(tmp_path):
    rows = [{"ID": "2024-I-1", "Problem": "Find it.", "Solution": "...", "Answer": 204}]
    (p,) = read(write(tmp_path / "a.jsonl", rows, "jsonl"))
    assert (p.id, p.question, p.answer) == ("aime/2024-I-1", "Find it.", "204")


def test_explicit_format_and_source(tmp_path):
    path = write(tmp_path / "g.jsonl", GSM8K, "jsonl")
    problems = read(path, format="gsm8k", source="gsm8k_train")
    assert problems[1].id == "gsm8k_train/2" and problems[1].source == "gsm8k_train"
    with pytest.raises(ValueError, match="unknown format"):
        read(path, format="nope")


BROKEN_GSM8K_LINES = [
    json.dumps(GSM8K[0]),
    json.dumps({"question": "no gold here", "answer": "it is 4"}),  # row 2: no ####
    "{not json",  # row 3
    json.dumps({"question": "", "answer": "#### 1"}),  # row 4: empty question
    json.dumps(GSM8K[1]),
]


def test_malformed_row_error_names_file_row_and_field(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(BROKEN_GSM8K_LINES) + "\n")
    with pytest.raises(DataError) as info:
        read(path, format="gsm8k")
    err = info.value
    assert (err.path, err.row, err.field) == (str(path), 2, "answer")
    assert str(path) in str(err) and "row 2" in str(err) and "'answer'" in str(err)


def test_skip_mode_reports_rows(tmp_path, caplog):
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(BROKEN_GSM8K_LINES) + "\n")
    with caplog.at_level(logging.WARNING, logger="pillion.data"):
        report = read_with_report(path, on_error="skip")
    assert report.format == "gsm8k" and report.rows == 5
    assert [p.id for p in report.problems] == ["gsm8k/1", "gsm8k/5"]  # ids stay row-based
    assert [(s.row, s.field, s.missing_answer) for s in report.skipped] == [
        (2, "answer", True), (3, None, False), (4, "question", False)]
    assert "skipped 3 of 5 rows" in caplog.text and "rows 2, 3, 4" in caplog.text
    assert len(read(path, on_error="skip")) == 2


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_broken_rows_in_json_and_parquet(tmp_path, kind):
    rows = [MATH[0], {"problem": "No box.", "solution": "It is 3.", "level": "Level 2",
                      "type": "Algebra"}, {**MATH[1], "level": "hard"}]
    path = write(tmp_path / f"m.{kind}", rows, kind)
    with pytest.raises(DataError, match=r"row 2: field 'solution'"):
        read(path)
    report = read_with_report(path, on_error="skip")
    assert [(s.row, s.field) for s in report.skipped] == [(2, "solution"), (3, "level")]
    assert [p.answer for p in report.problems] == ["2"]


def test_orz_broken_turns(tmp_path):
    rows = [ORZ[0], [{"from": "human", "value": "Q?"}, {"from": "assistant"}], "just text"]
    report = read_with_report(write(tmp_path / "o.json", rows, "json"), on_error="skip")
    assert [(s.row, s.field) for s in report.skipped] == [(2, "ground_truth"), (3, None)]


def test_code_problem_needs_tests_and_math_needs_answer(tmp_path):
    rows = [{"question": "Write f.", "kind": "code"}, {"question": "What is 1+1?"},
            {"question": "What is 2+2?", "solution": "so \\boxed{4}"}]
    report = read_with_report(write(tmp_path / "g.jsonl", rows, "jsonl"), format="generic",
                              on_error="skip")
    assert [(s.row, s.field) for s in report.skipped] == [(1, "tests"), (2, "answer")]
    assert report.problems[0].answer == "4"  # generic falls back to the solution's boxed answer


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type"):
        read(tmp_path / "x.csv")
    unknown = write(tmp_path / "u.jsonl", [{"foo": 1}], "jsonl")
    with pytest.raises(DataError, match="cannot tell the format"):
        read(unknown)
    with pytest.raises(ValueError, match="on_error"):
        read(unknown, on_error="ignore")


def test_json_variants(tmp_path):
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    assert len(read(tmp_path / "lines.json")) == 2  # JSON lines named .json
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": GSM8K}))
    assert len(read(tmp_path / "wrapped.json")) == 2
    columns = {"question": [r["question"] for r in GSM8K], "answer": [r["answer"] for r in GSM8K]}
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    assert [p.answer for p in read(tmp_path / "columns.json")] == ["5", "999"]


def test_hub_id_without_datasets_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match="pip install datasets"):
        read("openai/gsm8k")


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces are still braces
    assert last_boxed("$\\fbox{12}$") == "12"
    assert last_boxed("$\\boxed 5$.") == "5"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("no box") is None


MINERVA = [  # the Minerva OCW-courses layout (Qwen2.5-Math's minerva_math/test.jsonl)
    {"problem": "Find the mass in kg.", "solution": "So the mass is $\\boxed{3.2e4}$ kg.",
     "type": "Introduction to Astronomy (8.282J Spring 2006)", "idx": 0},
    {"problem": "Compute the rate.", "solution": "Answer: \\boxed{\\frac{1}{2}}.", "type": "Ecology I (1.018J)",
     "idx": 7},
    {"problem": "No box here.", "solution": "It is 5.", "type": "Ecology I (1.018J)", "idx": 8},
]
OLYMPIAD = [  # OpenBMB/OlympiadBench rows (OE_TO_maths_en_COMP layout)
    {"id": 1606, "subfield": "Combinatorics", "context": None, "question": "Find the smallest $M$.",
     "solution": ["First ...", "Hence $M=2$."], "final_answer": ["$2$"], "is_multiple_answer": False,
     "unit": None, "answer_type": "Numerical", "question_type": "Open-ended", "language": "English",
     "subject": "Math", "error": None},
    {"id": 1700, "subfield": "Algebra", "context": "Let $f(x)=x^2$.", "question": "Find all roots of $f(x)=4$.",
     "solution": ["..."], "final_answer": ["$2$", "$-2$"], "is_multiple_answer": True, "unit": None,
     "answer_type": "Numerical", "question_type": "Open-ended", "language": "English", "subject": "Math",
     "error": None},
    {"id": 1800, "subfield": "Mechanics", "context": None, "question": "Find the speed.", "solution": ["..."],
     "final_answer": ["$$3.5$$"], "is_multiple_answer": False, "unit": "m/s", "answer_type": "Numerical",
     "question_type": "Open-ended", "language": "English", "subject": "Physics", "error": "1e-1"},
    {"id": 1900, "subfield": "Algebra", "question": "Prove it.", "solution": ["..."], "final_answer": None,
     "answer_type": "Need_human_evaluate", "question_type": "Theorem proof"},
    {"id": 2000, "subfield": "Geometry", "question": "In the figure, find x.", "final_answer": ["$1$"],
     "image_1": "<image bytes>", "image_2": None},
]


def test_minerva_reader(tmp_path):
    report = read_with_report(write(tmp_path / "minerva.jsonl", MINERVA, "jsonl"), on_error="skip")
    assert report.format == "minerva"
    assert [(p.id, p.answer) for p in report.problems] == [("minerva/0", "3.2e4"), ("minerva/7", "\\frac{1}{2}")]
    assert report.problems[0].meta == {"subject": "Introduction to Astronomy (8.282J Spring 2006)"}
    assert report.problems[0].level is None and report.problems[0].solution == MINERVA[0]["solution"]
    (skipped,) = report.skipped
    assert (skipped.row, skipped.field, skipped.missing_answer) == (3, "solution", True)


def test_olympiadbench_reader(tmp_path):
    path = write(tmp_path / "olympiad.json", OLYMPIAD, "json")
    report = read_with_report(path, on_error="skip")
    assert report.format == "olympiadbench"
    one, two, three = report.problems
    assert (one.id, one.question, one.answer) == ("olympiadbench/1606", "Find the smallest $M$.", "2")
    assert one.solution == "First ...\n\nHence $M=2$." and one.meta["subfield"] == "Combinatorics"
    # context before the question; several final answers joined for the grader's list comparison
    assert (two.question, two.answer) == ("Let $f(x)=x^2$.\nFind all roots of $f(x)=4$.", "2, -2")
    assert (three.answer, three.meta["unit"], three.meta["subject"]) == ("3.5", "m/s", "Physics")  # $$...$$
    proof, image = report.skipped
    assert (proof.row, proof.field, proof.missing_answer) == (4, "final_answer", True)
    assert (image.row, image.field, image.missing_answer) == (5, "image_1", False)
    with pytest.raises(DataError, match=r"row 4: field 'final_answer': a proof problem"):
        read(path)


def test_auto_detection_of_minerva_and_olympiadbench():
    assert detect_format(MINERVA) == "minerva"
    assert detect_format(OLYMPIAD) == "olympiadbench"
    # MATH rows (level, no idx) stay "math"; a MATH row that happens to carry idx and a level too
    assert detect_format([{**MATH[0], "idx": 3}]) == "math"


def test_a_code_problem_whose_test_does_not_compile_is_a_bad_row(tmp_path, caplog):
    """Found at load by compiling (never running) the test; stdin/stdout tests are data, not code."""
    path = tmp_path / "code.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Write f.", "kind": "code", "tests": ["assert f(1) == 1"]},
        {"question": "Write g.", "kind": "code", "tests": ["assert g(1) == 1", "assert g(2) == +"]},
        {"question": "Echo.", "kind": "code", "tests": [{"input": "1 +", "output": "1 +"}]},
    ]) + "\n")
    with pytest.raises(DataError, match=r"code.jsonl, row 2: field 'tests': test 2 does not compile \(SyntaxError: "
                                        r"invalid syntax, line 1\)"):
        read(path)
    with caplog.at_level(logging.WARNING):
        report = read_with_report(path, on_error="skip")
    assert [p.question for p in report.problems] == ["Write f.", "Echo."]
    assert [(s.row, s.field) for s in report.skipped] == [(2, "tests")]
