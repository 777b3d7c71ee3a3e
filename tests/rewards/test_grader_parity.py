"""pillion's grader on the hand-written cases of grader_cases.py, one test per category, and
side by side with math-verify: pillion agrees with the labels at least as often as
math-verify does in every category (`python benchmarks/grader_parity.py` prints the table)."""

import pytest

from pillion.rewards import GradingPool
from tests.rewards.grader_cases import CASES, agreement, pillion_verdicts, rows


@pytest.fixture(scope="module")
def pool():
    with GradingPool(workers=2, timeout=30.0) as pool:  # generous: right answers never race the clock
        yield pool


def _check(category: str, pool) -> None:
    verdicts = pillion_verdicts(category, pool)
    wrong = [f"{text!r} vs gold {gold!r}: expected {equal}" for (text, gold, equal, _), verdict
             in zip(rows(category), verdicts) if verdict != equal]
    assert not wrong, f"{len(wrong)} of {len(verdicts)} {category} cases:\n" + "\n".join(wrong)


def test_the_cases_are_many_and_a_third_not_equal():
    labels = [equal for category in CASES for _, _, equal, _ in rows(category)]
    assert len(labels) >= 150
    assert sum(not e for e in labels) >= len(labels) / 3
    for category in CASES:  # both verdicts occur in every category
        assert {e for _, _, e, _ in rows(category)} == {True, False}, category


def test_no_box_fallback_extraction(pool):
    _check("no_box", pool)


def test_several_boxes_form_one_answer(pool):
    _check("multi_box", pool)


def test_numbers(pool):
    _check("numbers", pool)


def test_relations_and_intervals(pool):
    _check("relations", pool)


def test_matrices(pool):
    _check("matrices", pool)


def test_plain_text_math(pool):
    _check("plain_text", pool)


def test_arithmetic_left_in_the_answer(pool):
    _check("arithmetic", pool)


def test_multisets_written_as_sets(pool):
    _check("multisets", pool)


def test_answers_only_inside_reasoning(pool):
    _check("think", pool)


def test_rounded_decimals_against_exact_golds(pool):
    _check("precision", pool)


@pytest.mark.slow  # math-verify on all 221 cases: ~15 s alone, more on a busy machine
def test_at_least_math_verify_in_every_category():
    table = agreement()
    for category, (n, ours, theirs) in table.items():
        print(f"{category:12s} n={n:3d} pillion {ours}/{n} math-verify {theirs}/{n}")
        assert ours >= theirs, (category, ours, theirs)
