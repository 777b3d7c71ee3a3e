"""The grader's rules for bare answers and the false positives that came with them, each with a
hand-written expectation: extraction of a whole text that is one expression, the last number
of prose, parts of a gold, interval ends, inequalities in any variable, decimal commas,
choice letters in formatting, matrices, lists with semicolons, units inside a box."""

import pytest

from pillion.problem import Problem
from pillion.rewards import RewardConfig, extract_answer, math_equal, score
from pillion.rewards.extract import answer_for

GENEROUS = 60.0  # symbolic comparisons must never lose a race against the clock here


def graded(text: str, gold: str, question: str = "", style: str = "fallback") -> bool | None:
    problem = Problem(id="p", question=question, answer=gold)
    return score(problem, text, 10, RewardConfig(answer_style=style, timeout=GENEROUS)).correct


# Bare completions (what `pillion eval`'s fallback style receives from a terse model, a
# dataset's answer column, another grader's extraction): the whole text is the answer.
@pytest.mark.parametrize("text,gold,equal", [
    ("\\dfrac{3}{56}", "\\frac{3}{56}", True),  # the last number, 56, was graded
    ("\\sqrt{366}", "366", False),  # 366 is the radicand: a reward was paid for it
    ("\\frac{1}{5}", "5", False),  # 5 is the denominator
    ("1,\\!248", "1248", True),  # 248 was graded
    ("- q + p", "p - q", True),
    ("x^2 + 2*x + 1", "x^2+2x+1", True),  # 1 was graded
])
def test_the_six_bare_answers(text, gold, equal):
    assert graded(text, gold) is equal


def test_an_equation_side_is_not_the_equation():
    # The value after "=" is the answer only when the left side is a name ("x =", "f(x) =").
    assert math_equal("0", "5x - 7y + 11z + 4 = 0", timeout=GENEROUS) is False
    assert math_equal("5x - 7y + 11z + 4", "5x - 7y + 11z + 4 = 0", timeout=GENEROUS) is False
    assert math_equal("0 = 5x - 7y + 11z + 4", "5x - 7y + 11z + 4 = 0", timeout=GENEROUS) is True  # sides swapped
    assert math_equal("x^2 - 4 = 0", "0", timeout=GENEROUS) is False
    assert math_equal("2x + 3", "y = 2x + 3", timeout=GENEROUS) is True  # an assignment's value is the answer
    assert math_equal("f(x) = 2x + 3", "2x+3", timeout=GENEROUS) is True


def test_interval_ends_are_compared_after_x_in():
    assert math_equal("x \\in [-2,7)", "x \\in [-2,7]", timeout=GENEROUS) is False
    assert math_equal("x \\in (-2,7]", "x \\in [-2,7]", timeout=GENEROUS) is False
    assert math_equal("x \\in [-2, 7]", "x \\in [-2,7]", timeout=GENEROUS) is True
    assert math_equal("[-2,7]", "x \\in [-2,7]", timeout=GENEROUS) is True
    assert math_equal("x \\in (5, \\infty)", "(5,\\infty)", timeout=GENEROUS) is True  # \infty is not \in
    assert math_equal("x \\in [5, \\infty)", "(5,\\infty)", timeout=GENEROUS) is False


def test_a_part_of_the_gold_is_never_the_whole():
    # One member of a tuple, a radicand, a denominator, an exponent, an equation's side.
    assert graded("3", "\\left( 3, \\frac{\\pi}{2} \\right)") is False
    assert graded("\\frac{\\pi}{2}", "\\left( 3, \\frac{\\pi}{2} \\right)") is False
    assert graded("13", "3\\sqrt{13}") is False
    assert graded("56", "\\frac{3}{56}") is False
    assert graded("5", "x^5") is False
    assert graded("248", "1,\\!248") is False
    # And the reverse: a whole that contains the gold (its root, its reciprocal, its square).
    assert graded("\\sqrt{366}", "366") is False
    assert graded("16^{2}", "16") is False


def test_bare_text_is_one_expression_decided_by_parsing():
    assert extract_answer("\\dfrac43") == "\\dfrac43"
    assert extract_answer("\\left( 3, \\tfrac{\\pi}{2} \\right)") == "\\left( 3, \\tfrac{\\pi}{2} \\right)"
    assert extract_answer("x = 5.") == "x = 5"  # a closing period is not part of it
    assert extract_answer("$\\frac{3}{4}$") == "\\frac{3}{4}"  # nor one pair of math delimiters
    assert extract_answer("3 \\sqrt5") == "3 \\sqrt5"
    assert extract_answer("\\text{(C)}") == "\\text{(C)}"
    assert extract_answer("Evelyn") == "Evelyn"  # one word is a bare answer too
    # Prose is not one expression: the earlier rules still apply.
    assert extract_answer("We get 12 + 30 = 42, so 40 after the refund") == "40"
    assert extract_answer("I think it might be 5 or 6") == "6"


def test_the_last_number_of_prose_is_never_inside_an_argument():
    # A fraction, a root, an exponent, a subscript, a \text: their numbers are parts.
    assert extract_answer("so the value is \\frac{3}{56} here") is None
    assert extract_answer("the side is \\sqrt{366} units") is None
    assert extract_answer("we get x^2 so the area is 7") == "7"
    assert extract_answer("it is \\frac43 roughly") is None
    assert extract_answer("in base 8 it is 52_8 I think") == "52"
    assert extract_answer("the total is 1,\\!248 apples") == "1,\\!248"  # a thousands separator is no argument
    assert extract_answer("the set is \\{1, 2, 3\\} so 3") == "3"


def test_training_keeps_the_strict_boxed_style():
    # A bare answer is no answer in the boxed style: training never pays for it.
    assert extract_answer("\\dfrac{3}{56}", "boxed") is None
    assert graded("\\dfrac{3}{56}", "\\frac{3}{56}", style="boxed") is False
    assert graded("The answer is \\boxed{\\dfrac{3}{56}}", "\\frac{3}{56}", style="boxed") is True
    assert extract_answer("- q + p", "auto") is None  # "auto" reads explicit markers only


def test_an_inequality_in_any_variable_is_its_interval():
    question = "Find the values of $\\lambda,$ $0 \\le \\lambda \\le 4,$ for which $f(f(x)) = x$."
    assert graded("3 < \\lambda \\le 4", "(3,4]", question) is True
    assert graded("4 \\ge \\lambda > 3", "(3,4]", question) is True  # written downwards
    assert graded("3 \\le \\lambda \\le 4", "(3,4]", question) is False  # a closed end for an open one
    assert graded("\\lambda \\in (3, 4]", "(3,4]", question) is True
    # Not in a variable the question is not about: 3 < t <= 4 answers another question.
    assert graded("3 < t \\le 4", "(3,4]", question) is False
    assert math_equal("3 < t \\le 4", "(3,4]", timeout=GENEROUS) is True  # no question: any name
    assert math_equal("3 < t \\le 4", "3 < x \\le 4", timeout=GENEROUS) is False  # two names
    assert math_equal("1 < x_1 < 2", "(1,2)", timeout=GENEROUS) is True
    assert math_equal("t \\ge 0", "[0,\\infty)", timeout=GENEROUS) is True


def test_an_inequality_and_its_rearranged_or_negated_form():
    assert math_equal("5 < x", "(5,\\infty)", timeout=GENEROUS) is True  # the bound first
    assert math_equal("-x < -5", "(5,\\infty)", timeout=GENEROUS) is True  # both sides negated: x > 5
    assert math_equal("-x \\le -5", "(5,\\infty)", timeout=GENEROUS) is False  # x >= 5 includes 5
    assert math_equal("-x > 2 - \\sqrt{3}", "(-\\infty, \\sqrt{3} - 2)", timeout=GENEROUS) is True
    assert math_equal("x > 5", "x < 5", timeout=GENEROUS) is False


def test_relations_are_not_compared_with_positive_symbols():
    # With positive symbols, y = -2x and y = -7x have no solution each: "equal" by solving.
    assert math_equal("y = -7x", "y = -2x", timeout=GENEROUS) is False
    assert math_equal("y = -2x", "y = -2x", timeout=GENEROUS) is True
    assert math_equal("2x - y + 3 = 0", "y = 2x + 3", timeout=GENEROUS) is True


def test_the_last_side_of_a_chain_of_equalities():
    assert math_equal("7 \\times 6 = 42", "42", timeout=GENEROUS) is True
    assert math_equal("x = 2 + 3 = 5", "5", timeout=GENEROUS) is True
    assert math_equal("A = \\pi r^2 = 25\\pi", "25\\pi", timeout=GENEROUS) is True
    assert math_equal("40 + 2 = 43", "42", timeout=GENEROUS) is False
    assert graded("198 + 168 = 366", "366") is True  # bare


def test_a_decimal_comma():
    assert math_equal("2,5", "2.5", timeout=GENEROUS) is True
    assert math_equal("2{,}5", "2.5", timeout=GENEROUS) is True  # {,} before a digit or two: decimal
    assert math_equal("1{,}234", "1234", timeout=GENEROUS) is True  # before three: thousands
    assert math_equal("0,15", "0.15", timeout=GENEROUS) is True
    assert math_equal("2,6", "2.5", timeout=GENEROUS) is False
    assert graded("Therefore, the answer is $3,21$.", "3.21") is True


def test_choice_letters_inside_formatting():
    for text in ("\\textbf{(C)}", "\\text{C}", "\\mathrm{(C)}", "\\textbf{C}", "(C)", "C"):
        assert graded(text, "\\text{(C)}") is True, text
        assert graded(f"The answer is $\\boxed{{{text}}}$.", "\\text{(C)}") is True, text
    assert graded("\\textbf{(D)}", "\\text{(C)}") is False


def test_matrices_in_every_form():
    gold = "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}"
    for text in ("\\begin{bmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{bmatrix}",
                 "\\left[\\begin{array}{c} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{array}\\right]",
                 "\\left(\\begin{array}{c} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{array}\\right)"):
        assert graded(text, gold) is True, text
        assert graded(f"So $\\boxed{{{text}}}$.", gold) is True, text
    assert graded("\\begin{bmatrix} -1/3 \\\\ 5/3 \\\\ 2/3 \\end{bmatrix}", gold) is False  # entries swapped


def test_lists_separated_by_semicolons():
    assert math_equal("1; -2", "1,-2", timeout=GENEROUS) is True
    assert math_equal("7; 5; 3", "3, 5, 7", timeout=GENEROUS) is True  # a set: any order
    assert math_equal("\\{1; 2\\}", "\\{2, 1\\}", timeout=GENEROUS) is True
    assert math_equal("1,5; 2,25", "\\{1.5, 2.25\\}", timeout=GENEROUS) is True  # decimal commas inside
    assert math_equal("3; 7", "3, 5, 7", timeout=GENEROUS) is False  # a member dropped
    assert graded("1 - \\sqrt{19}; 1 + \\sqrt{19}", "1 \\pm \\sqrt{19}") is True


def test_units_in_text_inside_a_box():
    assert graded("So she pays $\\boxed{18 \\text{ dollars}}$.", "18") is True
    assert graded("The answer is $\\boxed{\\$18.90}$.", "\\$18.90") is True
    assert graded("$\\boxed{864\\text{ inches}^2}$", "864 \\mbox{ inches}^2") is True
    assert graded("$\\boxed{5.4\\text{ cents}}$", "5.4 \\text{ cents}") is True
    assert graded("$\\boxed{90\\text{ degrees}}$", "90^\\circ") is True
    assert graded("$\\boxed{19 \\text{ dollars}}$", "18") is False


def test_several_bare_members_form_one_answer_for_a_list_gold():
    assert answer_for("1 + \\sqrt{19}, 1 - \\sqrt{19}", "1 \\pm \\sqrt{19}") == "1 + \\sqrt{19}, 1 - \\sqrt{19}"
    assert graded("7, 5, 3", "3, 5, 7") is True
    assert graded("3, 7", "3, 5, 7") is False
