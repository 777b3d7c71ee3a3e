"""Code dataset readers: HumanEval, MBPP and stdin/stdout fixtures, detected, graded, broken rows named."""

import base64
import json
import pickle
import zlib

import pytest

from pillion.data.code_formats import CODE_FORMATS, detect_code_format
from pillion.data.formats import FORMATS, PARSERS, DataError, read, read_with_report
from pillion.rewards.code import SandboxLimits, code_reward

LIMITS = SandboxLimits(wall_s=5.0, cpu_s=2, memory_mb=512)

HUMANEVAL = [
    {"task_id": "HumanEval/0",
     "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs.\n'
               '    >>> total([1, 2])\n    3\n    """\n',
     "entry_point": "total", "canonical_solution": "    return sum(xs)\n",
     "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n"
             "    assert candidate([]) == 0\n"},
    {"task_id": "HumanEval/1", "prompt": 'def inc(x):\n    """x + 1"""\n', "entry_point": "inc",
     "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"},
]
MBPP = [
    {"task_id": 2, "text": "Write a function to find the shared elements of two lists.",
     "code": "def similar_elements(a, b):\n  return tuple(set(a) & set(b))",
     "test_list": ["assert set(similar_elements((3, 4, 5), (5, 7, 4))) == {4, 5}",
                   "assert similar_elements((1, 2), (3, 4)) == ()"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 3, "text": "Write a function that tells if n is not prime.",
     "code": "import math\ndef is_not_prime(n):\n    return any(n % i == 0 for i in range(2, int(math.sqrt(n)) + 1))",
     "test_list": ["assert is_not_prime(10) == True", "assert is_not_prime(LIMIT) == False"],
     "test_setup_code": "LIMIT = 7", "challenge_test_list": []},
]
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"
APPS = [  # input_output JSON-encoded, as APPS and TACO store it
    {"problem_id": 10, "question": "Read two integers and print their sum.", "difficulty": "introductory",
     "solutions": json.dumps([ADD_PROGRAM]), "starter_code": "",
     "input_output": json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]})},
    {"problem_id": 11, "question": "Return the larger of a and b.", "difficulty": "interview",
     "solutions": json.dumps(["class Solution:\n    def bigger(self, a, b):\n        return max(a, b)"]),
     "starter_code": "class Solution:\n    def bigger(self, a, b):\n        ",
     "input_output": json.dumps({"fn_name": "bigger", "inputs": [[1, 2], [7, 3]], "outputs": [[2], [7]]})},
]
TACO = [  # inputs and outputs as lists of lines, upper-case difficulty
    {"question": "Sum two numbers on two lines.", "difficulty": "MEDIUM_HARD", "starter_code": "",
     "solutions": [], "input_output": {"inputs": [["1", "2"]], "outputs": [["3"]]}},
]
CODECONTESTS = [
    {"name": "1_A. Sum", "description": "Print a + b.",
     "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
     "private_tests": {"input": ["2 2\n"], "output": ["4\n"]},
     "generated_tests": {"input": ["0 0\n", "9 9\n"], "output": ["0\n", "18\n"]},
     "solutions": {"language": [2, 3], "solution": ["int main() {}", ADD_PROGRAM]}, "difficulty": 7},
]


def _lcb_compress(cases):
    """code_generation_lite's private tests: base64(zlib(pickle(json text)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LIVECODEBENCH = [
    {"question_id": "abc001_a", "question_title": "Sum", "question_content": "Print a + b.", "platform": "atcoder",
     "difficulty": "easy", "starter_code": "", "metadata": "{}",
     "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
     "private_test_cases": _lcb_compress([{"input": "4 4\n", "output": "8\n", "testtype": "stdin"}])},
    {"question_id": "2000", "question_title": "Bigger", "question_content": "Return the larger of a and b.",
     "platform": "leetcode", "difficulty": "medium",
     "starter_code": "class Solution:\n    def bigger(self, a: int, b: int) -> int:\n        ",
     "metadata": json.dumps({"func_name": "bigger"}),
     "public_test_cases": json.dumps([{"input": "1\n2", "output": "2", "testtype": "functional"}]),
     "private_test_cases": json.dumps([{"input": "[5]\n[3]", "output": "[5]", "testtype": "functional"}])},
]


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_code_format_is_a_read_format():
    assert set(CODE_FORMATS) <= set(FORMATS) and set(FORMATS) == set(PARSERS)


@pytest.mark.parametrize("rows, fmt", [(HUMANEVAL, "humaneval"), (MBPP, "mbpp"), (APPS, "apps"), (TACO, "apps"),
                                       (CODECONTESTS, "codecontests"), (LIVECODEBENCH, "livecodebench")])
def test_auto_detection(tmp_path, rows, fmt):
    report = read_with_report(write(tmp_path, f"{fmt}.jsonl", rows))
    assert report.format == fmt and len(report.problems) == len(rows)
    assert all(p.kind == "code" and p.tests and p.answer == "" for p in report.problems)


def test_humaneval_fields_and_both_answer_styles(tmp_path):
    problems = read(write(tmp_path, "he.jsonl", HUMANEVAL))
    first = problems[0]
    assert first.id == "humaneval/HumanEval/0" and first.question == HUMANEVAL[0]["prompt"]
    assert first.meta["code_prefix"] == HUMANEVAL[0]["prompt"] and first.meta["entry_point"] == "total"
    assert first.tests == [HUMANEVAL[0]["test"] + "\n\ncheck(total)\n"]
    for p, row in zip(problems, HUMANEVAL):
        prefix = p.meta["code_prefix"]
        assert code_reward(row["canonical_solution"], p.tests, LIMITS, prefix=prefix) == 1.0  # completion
        assert code_reward(p.solution, p.tests, LIMITS, prefix=prefix) == 1.0  # whole function, typing imported
        assert code_reward("    return 0\n", p.tests, LIMITS, prefix=prefix) == 0.0


def test_mbpp_question_tests_and_setup(tmp_path):
    problems = read(write(tmp_path, "mbpp.jsonl", MBPP))
    assert problems[0].id == "mbpp/2" and "Your code should pass these tests:\nassert set(" in problems[0].question
    assert problems[1].tests[1] == "LIMIT = 7\nassert is_not_prime(LIMIT) == False"  # setup runs before it
    for p in problems:
        assert code_reward(p.solution, p.tests, LIMITS) == 1.0
    wrong = "```python\ndef is_not_prime(n):\n    return True\n```"
    assert code_reward(wrong, problems[1].tests, LIMITS) == 0.5  # 10 is not prime; 7 is


def test_sanitized_mbpp_prompt_and_imports(tmp_path):
    row = {"task_id": 5, "prompt": "Write sq(x) returning x squared.", "code": "def sq(x):\n    return math.pow(x, 2)",
           "test_imports": ["import math"], "test_list": ["assert sq(3) == 9"]}
    (problem,) = read(write(tmp_path, "sanitized.jsonl", [row]))
    assert problem.tests == ["import math\nassert sq(3) == 9"]
    # the tests' imports run in the solution's namespace before the asserts, as in MBPP's harness
    assert code_reward(problem.solution, problem.tests, LIMITS) == 1.0
    assert code_reward("```python\ndef sq(x):\n    return 2 * x\n```", problem.tests, LIMITS) == 0.0


def test_stdio_sets_apps_taco_codecontests(tmp_path):
    apps = read(write(tmp_path, "apps.jsonl", APPS))
    assert apps[0].tests == [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]
    assert (apps[0].level, apps[1].level) == (1, 2)
    assert "Starter code:\n```python\nclass Solution:" in apps[1].question
    assert "Solution().bigger(*[1, 2])" in apps[1].tests[0]  # call-based: an assert on the method
    for p in apps:
        assert code_reward(p.solution, p.tests, LIMITS) == 1.0
    assert code_reward("```python\nprint(3)\n```", apps[0].tests, LIMITS) == 0.5

    (taco,) = read(write(tmp_path, "taco.jsonl", TACO))
    assert taco.tests == [{"input": "1\n2", "output": "3"}] and taco.level == 3
    assert code_reward("```python\nprint(int(input()) + int(input()))\n```", taco.tests, LIMITS) == 1.0

    (contest,) = read(write(tmp_path, "cc.jsonl", CODECONTESTS))
    assert contest.id == "codecontests/1_A. Sum" and len(contest.tests) == 2  # public + private
    assert contest.meta["generated_tests_unused"] == 2 and contest.solution == f"```python\n{ADD_PROGRAM}\n```"
    assert code_reward(contest.solution, contest.tests, LIMITS) == 1.0


def test_livecodebench_compressed_private_and_functional_tests(tmp_path):
    stdin, functional = read(write(tmp_path, "lcb.jsonl", LIVECODEBENCH))
    assert stdin.tests == [{"input": "1 2\n", "output": "3\n"}, {"input": "4 4\n", "output": "8\n"}]
    assert (stdin.level, functional.level) == (1, 2)
    assert code_reward(f"```python\n{ADD_PROGRAM}\n```", stdin.tests, LIMITS) == 1.0
    right = "```python\nclass Solution:\n    def bigger(self, a, b):\n        return max(a, b)\n```"
    assert code_reward(right, functional.tests, LIMITS) == 1.0  # bigger(1, 2) == 2, bigger([5], [3]) == [5]
    assert code_reward(right.replace("max", "min"), functional.tests, LIMITS) == 0.0


def test_a_pickle_that_calls_something_is_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pickle ran code",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Boom()))).decode()
    row = {**LIVECODEBENCH[0], "private_test_cases": evil}
    with pytest.raises(DataError, match=r"row 1: field 'private_test_cases': not JSON"):
        read(write(tmp_path, "evil.jsonl", [row]))


@pytest.mark.parametrize("rows, field, message", [
    ([HUMANEVAL[0], {**HUMANEVAL[1], "entry_point": "not a name"}], "entry_point", "not a Python name"),
    ([MBPP[0], {**MBPP[1], "test_list": []}], "test_list", "non-empty list"),
    ([APPS[0], {**APPS[0], "input_output": "{not json"}], "input_output", "not JSON"),
    ([APPS[0], {**APPS[0], "input_output": json.dumps({"inputs": ["1"], "outputs": []})}], "input_output",
     "1 inputs but 0 outputs"),
    ([CODECONTESTS[0], {**CODECONTESTS[0], "public_tests": {"input": [], "output": []},
                        "private_tests": {"input": [], "output": []}}], "public_tests", "no tests"),
    ([LIVECODEBENCH[0], {**LIVECODEBENCH[1], "metadata": "{}"}], "metadata", "func_name"),
])
def test_malformed_rows_are_named_by_file_and_row(tmp_path, rows, field, message):
    path = write(tmp_path, "broken.jsonl", rows)
    with pytest.raises(DataError, match=rf"broken.jsonl, row 2: field '{field}': .*{message}"):
        read(path)
    report = read_with_report(path, on_error="skip")
    assert len(report.problems) == 1 and [(s.row, s.field) for s in report.skipped] == [(2, field)]


def test_detection_leaves_math_formats_alone():
    assert detect_code_format({"question", "answer"}) is None
    assert detect_code_format({"problem", "solution", "answer", "unique_id"}) is None
    assert detect_code_format({"prompt", "answer"}) is None  # a generic math row with a prompt
