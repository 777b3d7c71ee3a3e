import time

import pytest

from pillion.rewards import extract_answer
from pillion.rewards.extract import all_answers


@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces inside a boxed set
    ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),  # the last one, never merged
    ("$\\boxed 5$", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{3} and finally \\fbox{4}", "4"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    ("unfinished \\boxed{\\frac{1}{2", None),
])
def test_boxed(text, expected):
    assert extract_answer(text, "boxed") == expected


def test_gsm8k_answer_is_and_tags():
    assert extract_answer("She has 3 + 4 = 7 apples.\n#### 7", "gsm8k") == "7"
    assert extract_answer("#### 1,234\n", "gsm8k") == "1,234"
    assert extract_answer("So the answer is 12.", "answer_is") == "12"
    assert extract_answer("The final answer is $\\frac{3}{4}$.", "answer_is") == "\\frac{3}{4}"
    assert extract_answer("Thus the answer is 3.5 cm. Done.", "answer_is") == "3.5 cm"
    assert extract_answer("Answer: 9", "answer_is") == "9"
    assert extract_answer("<think>2+2</think><answer>4</answer>", "tags") == "4"
    assert extract_answer("<answer>so \\boxed{5}</answer>", "tags") == "5"


def test_auto_prefers_boxed_then_tags_then_gsm8k_then_answer_is():
    assert extract_answer("the answer is 3. \\boxed{4}") == "4"
    assert extract_answer("<answer>6</answer> the answer is 5.") == "6"
    assert extract_answer("the answer is 5.\n#### 8") == "8"
    assert extract_answer("the answer is 5.") == "5"


def test_no_final_answer_is_none():
    assert extract_answer("I think it might be 5 or 6") is None
    assert extract_answer("") is None
    assert extract_answer("\\boxed{}") is None
    assert extract_answer("#### 7", "boxed") is None
    with pytest.raises(ValueError):
        extract_answer("x", "latex")


def test_all_answers_counts_candidates():
    assert all_answers("\\boxed{1} \\boxed{2}") == ["1", "2"]
    assert all_answers("nothing") == []


def test_huge_text_is_scanned_quickly():
    text = "{" * 50_000 + "\\boxed{" + "(" * 50_000 + "\\boxed{3}"
    start = time.monotonic()
    assert extract_answer(text) == "3"
    assert extract_answer("x" * 100_000) is None
    assert time.monotonic() - start < 1.0


def test_repeated_unclosed_boxes_cost_linear_time():
    # A degenerate completion repeating "\boxed{" would make a per-box brace scan quadratic.
    text = "\\boxed{" * 20_000 + "1"
    start = time.monotonic()
    assert extract_answer(text) is None
    assert time.monotonic() - start < 1.0
    text = "<answer>" * 20_000 + "2"
    start = time.monotonic()
    assert extract_answer(text) is None
    assert extract_answer("<answer>1</answer>" * 5_000 + "<answer>2</answer>") == "2"
    assert time.monotonic() - start < 1.0
