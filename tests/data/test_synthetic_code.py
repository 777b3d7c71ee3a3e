"""The synthetic code curriculum: right solutions pass its asserts, wrong ones fail, splits hold."""

import pytest

from pillion.data import synthetic_code
from pillion.data.synthetic import split_of
from pillion.rewards.code import SandboxLimits, code_reward, run_tests

LIMITS = SandboxLimits(wall_s=5.0, cpu_s=2, memory_mb=512)


def test_questions_solutions_and_tests_by_hand():
    problems = synthetic_code.generate(300, levels=(1,), split="test")
    p = next(q for q in problems if q.question.startswith("Write f(a, b)"))
    name, args = "f", ("a", "b")
    expression = p.question[len("Write f(a, b) that returns "):-1]
    assert p.solution == f"```python\ndef {name}({', '.join(args)}):\n    return {expression}\n```"
    assert p.kind == "code" and p.answer == "" and len(p.tests) == 3 and p.source == "synthetic_code"
    # every assert states f(values) == the expression's value, e.g. "assert f(3, 7) == 10" for a + b
    for test in p.tests:
        call, expected = test[len("assert f("):].split(") == ")
        a, b = (int(v) for v in call.split(", "))
        assert int(expected) == eval(expression, {}, {"a": a, "b": b})


def test_level3_words_map_to_python():
    problems = synthetic_code.generate(400, levels=(3,))
    larger = next(p for p in problems if "the larger of" in p.question)
    first, second = larger.question.split("the larger of ")[1].rstrip(".").split(" and ")
    assert f"return max({first}, {second})" in larger.solution
    remainder = [p for p in problems if "remainder" in p.question]
    assert remainder and all("%" in p.solution for p in remainder)


@pytest.mark.parametrize("level", synthetic_code.LEVELS)
def test_reference_solutions_pass_and_wrong_ones_fail(level):
    problems = synthetic_code.generate(12, levels=(level,), seed=3, split="test")
    for p in problems:
        assert code_reward(p.solution, p.tests, LIMITS) == 1.0, p.question
        # the same function returning a wrong value: its first argument plus 1000
        header, _ = p.solution.split("\n    return ")
        first_arg = header.split("(")[1].split(",")[0]
        wrong = f"{header}\n    return {first_arg} + 1000\n```"
        assert code_reward(wrong, p.tests, LIMITS) == 0.0, wrong
    # unfenced code is not graded: the prompt asks for one ```python block
    assert code_reward(p.solution.replace("```python\n", "").replace("```", ""), p.tests, LIMITS) == 0.0


def test_all_reference_solutions_of_a_batch_pass_in_one_process():
    """Cheaper than one sandbox per problem: 60 problems' functions and asserts, renamed apart."""
    problems = synthetic_code.generate(60, levels=(1, 2, 3), seed=1)
    code, tests = [], []
    for i, p in enumerate(problems):
        name = p.meta["entry_point"]
        body = p.solution.removeprefix("```python\n").removesuffix("\n```")
        code.append(body.replace(f"def {name}(", f"def {name}_{i}("))
        tests += [t.replace(f"assert {name}(", f"assert {name}_{i}(") for t in p.tests]
    result = run_tests("\n".join(code), tests, LIMITS)
    assert (result.passed, result.total) == (180, 180)


def test_deterministic_split_and_levels():
    a = synthetic_code.generate(50, levels=(1, 2), seed=7)
    b = synthetic_code.generate(50, levels=(1, 2), seed=7)
    assert [(p.id, p.question, p.tests) for p in a] == [(p.id, p.question, p.tests) for p in b]
    assert [p.level for p in a[:4]] == [1, 2, 1, 2]
    test = synthetic_code.generate(50, levels=(1, 2), seed=7, split="test")
    assert all(split_of(p.question) == "train" for p in a) and all(split_of(p.question) == "test" for p in test)
    assert not {p.question for p in a} & {p.question for p in test}
    assert len({p.question for p in a}) == 50  # distinct while the space allows
    with pytest.raises(ValueError, match="levels"):
        synthetic_code.generate(1, levels=(4,))
    with pytest.raises(ValueError, match="split"):
        synthetic_code.generate(1, split="dev")
