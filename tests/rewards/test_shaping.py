"""Reward terms against hand-computed values (docs/algorithms.md §6.4, §9, §11)."""

from types import SimpleNamespace

import pytest

from pillion.problem import Problem
from pillion.rewards import GradingPool, OverlongConfig, RewardConfig, RewardResult, score, score_batch
from pillion.rewards.shaping import format_ok, length_term, overlong_penalty


def generated(text: str, num_tokens: int, finish_reason: str = "stop") -> SimpleNamespace:
    """A completion as score_batch reads it: text, generated ids, finish reason."""
    return SimpleNamespace(text=text, ids=[0] * num_tokens, finish_reason=finish_reason)

MATH = Problem(id="m", question="1/2 as a decimal?", answer="0.5")
CODE = Problem(id="c", question="square", answer="", kind="code",
               tests=["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(-1) == 1", "assert sq(0) == 1"])


@pytest.mark.parametrize("length,expected", [
    (80, 0.0),    # <= L_max - L_cache = 80: no penalty
    (81, -0.05),  # (80 - 81) / 20
    (90, -0.5),   # (80 - 90) / 20
    (100, -1.0),  # (80 - 100) / 20, the window's end
    (101, -1.0),  # beyond L_max: -1
    (10_000, -1.0),
])
def test_overlong_penalty_small_example(length, expected):
    assert overlong_penalty(length, l_max=100, l_cache=20) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("length,expected", [(16384, 0.0), (18432, -0.5), (20480, -1.0)])
def test_overlong_penalty_paper_sizes(length, expected):
    # DAPO §4.1: expected length 16384 + cache 4096 = L_max 20480; (16384 - 18432) / 4096 = -0.5.
    assert overlong_penalty(length, l_max=20480, l_cache=4096) == expected


def test_overlong_enters_the_score_with_its_factor():
    cfg = RewardConfig(
        correct=1.0, incorrect=-1.0, overlong=OverlongConfig(enable=True, l_max=100, l_cache=20, factor=0.5)
    )
    result = score(MATH, "\\boxed{1/2}", 90, cfg)
    # correct +1, overlong 0.5 * -0.5 = -0.25, total 0.75
    assert result == RewardResult(
        score=0.75, correct=True, parts={"correct": 1.0, "format": 0.0, "overlong": -0.25, "length": 0.0},
        answer="1/2",
    )
    wrong = score(MATH, "\\boxed{2}", 101, cfg)
    # incorrect -1, overlong 0.5 * -1 = -0.5, total -1.5
    assert wrong.score == -1.5 and wrong.correct is False
    disabled = score(MATH, "\\boxed{2}", 10_000, RewardConfig())
    assert disabled.parts["overlong"] == 0.0


def test_correctness_values_are_configurable():
    assert score(MATH, "\\boxed{0.5}", 5, RewardConfig()).score == 1.0
    assert score(MATH, "\\boxed{0.6}", 5, RewardConfig()).score == 0.0
    dapo = RewardConfig(correct=1.0, incorrect=-1.0)
    assert score(MATH, "\\boxed{0.6}", 5, dapo).score == -1.0
    assert score(MATH, "no answer at all", 5, dapo).score == -1.0  # no final answer is wrong


def test_ungradable_problem_has_correct_none():
    no_gold = Problem(id="u", question="?", answer="")
    result = score(no_gold, "\\boxed{3}", 5, RewardConfig(correct=1.0, incorrect=-1.0, format_weight=0.2))
    assert result.correct is None
    assert result.parts["correct"] == 0.0
    assert result.score == pytest.approx(0.2)  # the format term still applies


def test_length_term_rewards_concise_correct_answers_only():
    # -min(n, l_max) / l_max for a correct response: n = 25, l_max = 100 -> -0.25.
    assert length_term(25, 100, True) == -0.25
    assert length_term(250, 100, True) == -1.0
    assert length_term(25, 100, False) == 0.0
    assert length_term(25, 100, None) == 0.0
    cfg = RewardConfig(length_weight=0.2, overlong=OverlongConfig(l_max=100))
    short = score(MATH, "\\boxed{0.5}", 25, cfg)   # 1 + 0.2 * -0.25 = 0.95
    long = score(MATH, "\\boxed{0.5}", 75, cfg)    # 1 + 0.2 * -0.75 = 0.85
    wrong = score(MATH, "\\boxed{0.7}", 25, cfg)   # 0, no length term
    assert short.score == pytest.approx(0.95)
    assert long.score == pytest.approx(0.85)
    assert wrong.score == 0.0 < long.score


def test_format_reward():
    assert format_ok("so \\boxed{3}", "math", "auto", False)
    assert not format_ok("\\boxed{3} or \\boxed{4}", "math", "auto", False)  # two final answers
    assert not format_ok("no answer", "math", "auto", False)
    assert not format_ok("\\boxed{3}", "math", "auto", False, finish_reason="length")
    assert format_ok("#### 3", "math", "gsm8k", False)
    assert not format_ok("\\boxed{3}", "math", "gsm8k", False)
    tagged = "<think>1+2=3</think>\n<answer>\\boxed{3}</answer>"
    assert format_ok(tagged, "math", "auto", True)
    assert not format_ok("\\boxed{3}", "math", "auto", True)
    assert not format_ok("<think>a</think><think>b</think><answer>\\boxed{3}</answer>", "math", "auto", True)
    assert not format_ok(tagged + " trailing", "math", "auto", True)
    assert format_ok("```python\nprint(1)\n```", "code", "auto", False)
    assert not format_ok("```python\na=1\n```\n```python\nb=2\n```", "code", "auto", False)
    cfg = RewardConfig(format_weight=0.5, think_tags=True)
    result = score(MATH, "<think>half</think><answer>\\boxed{0.5}</answer>", 9, cfg)
    assert result.parts == {"correct": 1.0, "format": 0.5, "overlong": 0.0, "length": 0.0}
    assert result.score == 1.5


def test_code_problem_reward_is_the_pass_fraction():
    text = "Here:\n```python\ndef sq(x):\n    return x * x\n```"
    result = score(CODE, text, 20, RewardConfig(correct=1.0, incorrect=-1.0))
    # 3 of 4 tests pass: -1 + (1 - -1) * 0.75 = 0.5; not fully correct.
    assert result.parts["correct"] == pytest.approx(0.5)
    assert result.correct is False
    assert score(CODE, "no code", 5, RewardConfig()).score == 0.0


def test_score_is_the_sum_of_parts_and_batch_matches_single():
    cfg = RewardConfig(correct=1.0, incorrect=-1.0, format_weight=0.1, length_weight=0.05,
                       overlong=OverlongConfig(enable=True, l_max=100, l_cache=20))
    problems = [MATH, MATH, MATH, CODE, Problem(id="s", question="?", answer="x^2+2x+1"), MATH]
    texts = ["\\boxed{\\frac12}", "\\boxed{0.4}", "the answer is 0.5.", "```python\ndef sq(x): return x*x\n```",
             "\\boxed{(x+1)^2}", "\\boxed{1/2} \\boxed{0.5}"]
    lengths = [10, 85, 120, 30, 50, 95]
    reasons = ["stop", "stop", "length", "stop", "stop", "stop"]
    single = [score(p, t, n, cfg, r) for p, t, n, r in zip(problems, texts, lengths, reasons)]
    completions = [generated(t, n, r) for t, n, r in zip(texts, lengths, reasons)]
    assert score_batch(problems, completions, cfg) == single
    with GradingPool(workers=2) as pool:
        assert score_batch(problems, completions, cfg, pool=pool) == single
    for result in single:
        assert result.score == pytest.approx(sum(result.parts.values()))
        assert set(result.parts) == {"correct", "format", "overlong", "length"}
    assert [r.correct for r in single] == [True, False, True, False, True, True]


def test_answer_is_what_the_grader_extracted():
    boxed = RewardConfig(answer_style="boxed")
    assert score(MATH, "so \\boxed{0.5}.", 5, boxed).answer == "0.5"
    assert score(MATH, "so \\boxed{1} then \\boxed{0.7}", 5, boxed).answer == "0.7"  # the last box
    none = score(MATH, "the answer is 0.5", 5, boxed)
    assert none.answer is None and none.correct is False  # not in the graded style
    fallback = score(MATH, "the answer is 0.5", 5, RewardConfig(answer_style="fallback"))
    assert fallback.answer == "0.5" and fallback.correct is True
    # Several boxes are one answer for a gold with several elements.
    roots = Problem(id="r", question="Solve x^2 = 4.", answer="-2, 2")
    both = score(roots, "\\boxed{2} and \\boxed{-2}", 5, boxed)
    assert both.answer == "2, -2" and both.correct is True
    assert score(roots, "\\boxed{2}", 5, boxed).correct is False
    # Code problems: the program that ran; none without a code block.
    text = "```python\ndef sq(x):\n    return x * x\n```"
    assert score(CODE, text, 20, RewardConfig()).answer == "def sq(x):\n    return x * x\n"
    assert score(CODE, "no code", 5, RewardConfig()).answer is None
    # No gold: nothing is graded, but the answer is still read.
    assert score(Problem(id="u", question="?", answer=""), "\\boxed{3}", 5, boxed).answer == "3"
    texts = ["\\boxed{0.5}", "\\boxed{2}, \\boxed{-2}", "none"]
    results = score_batch([MATH, roots, MATH], [generated(t, 5) for t in texts], boxed)
    assert [r.answer for r in results] == ["0.5", "2, -2", None]
    for r in results:
        assert r.score == sum(r.parts.values())


def test_boxed_style_grades_the_last_box_as_before():
    # The RL default (answer_style="boxed", single-number golds): the last box decides, a
    # draft box before it never counts, nothing outside a box counts.
    cfg = RewardConfig(answer_style="boxed")
    seven = Problem(id="s", question="What is 3+4?", answer="7")
    assert score(seven, "3+4=7. \\boxed{7}", 5, cfg).correct is True
    assert score(seven, "\\boxed{7}. No: \\boxed{8}", 5, cfg).correct is False
    assert score(seven, "\\boxed{8}. No: \\boxed{7}", 5, cfg).correct is True
    assert score(seven, "The answer is 7.", 5, cfg).correct is False
    assert score(seven, "\\boxed{007}", 5, cfg).correct is True
