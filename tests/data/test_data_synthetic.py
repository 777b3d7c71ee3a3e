"""Synthetic curriculum: determinism, exact answers, step format, and a clean train/test split."""

import re

import pytest

from pillion.data.synthetic import LEVELS, generate, split_of


def test_deterministic_from_seed():
    a = generate(200, levels=LEVELS, seed=3)
    b = generate(200, levels=LEVELS, seed=3)
    assert [(p.id, p.question, p.solution, p.answer) for p in a] == \
        [(p.id, p.question, p.solution, p.answer) for p in b]
    c = generate(200, levels=LEVELS, seed=4)
    assert [p.question for p in a] != [p.question for p in c]


def test_fields_and_level_cycle():
    problems = generate(10, levels=(2, 4), seed=0)
    assert [p.level for p in problems] == [2, 4] * 5
    assert all(p.source == "synthetic" and p.kind == "math" and p.meta["split"] == "train"
               for p in problems)


STEP = re.compile(r"^(\d+)([-+*])(\d+)=(\d+)$")


@pytest.mark.parametrize("level", LEVELS)
def test_answers_exact_and_steps_correct(level):
    for p in generate(300, levels=(level,), seed=1):
        *steps, last = p.solution.split("\n")
        last_step, boxed = last.split(". ")
        assert boxed == f"\\boxed{{{p.answer}}}"
        for line in [*steps, last_step]:  # every step is "x op y=z" and its arithmetic holds
            x, op, y, z = STEP.match(line).groups()
            assert {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op] == int(z)
        assert last_step.endswith(f"={p.answer}")
        if p.question.startswith("What is "):  # levels 1-4: the expression itself
            assert eval(p.question[8:-1]) == int(p.answer)
        elif p.question.startswith("Remainder of "):
            n, d = map(int, p.question[13:-1].split("/"))
            assert n % d == int(p.answer)
        if level <= 3:  # tiny char-level models: short and regular
            assert len(p.question) < 30 and len(p.solution) < 40


def test_word_problems_level5():
    for p in generate(100, levels=(5,), seed=0):
        assert p.question.endswith("?") and int(p.answer) >= 0
        assert len(p.solution.split("\n")) == 2


def test_train_and_test_never_overlap():
    train = generate(20000, levels=LEVELS, seed=0, split="train")
    test = generate(5000, levels=LEVELS, seed=123, split="test")
    train_q = {p.question for p in train}
    test_q = {p.question for p in test}
    assert train_q.isdisjoint(test_q)
    assert all(split_of(q) == "test" for q in test_q)
    assert all(split_of(q) == "train" for q in train_q)
    # the split is a fixed property of the question text: level 1 (small space) has test items
    assert {p.question for p in test if p.level == 1}


def test_distinct_questions_while_the_space_allows():
    problems = generate(1000, levels=(3,), seed=0)
    assert len({p.question for p in problems}) == 1000
    level1 = generate(500, levels=(1,), seed=0)  # ~150 level-1 questions exist: duplicates follow
    assert len(level1) == 500 and len({p.question for p in level1}) < 200


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate(5, levels=(6,))
    with pytest.raises(ValueError):
        generate(5, split="val")
