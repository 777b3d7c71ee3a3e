"""The bare-answer recogniser (pillion.rewards.expression): one expression, or not."""

import pytest

from pillion.rewards.expression import is_expression


@pytest.mark.parametrize("text", [
    "\\dfrac43", "\\dfrac{3}{56}", "\\left( 3, \\tfrac{\\pi}{2} \\right)", "- q + p", "1,\\!248", "1{,}248",
    "\\text{(C)}", "\\textbf{C}", "(C)", "C", "x = 5", "3 \\sqrt5", "\\sqrt{366}", "x^2 + 2*x + 1", "3*sqrt(13)",
    "(3, 4]", "x \\in [-2,7]", "3 < \\lambda \\le 4", "x_1 > 3", "(0,9) \\cup (9,36)", "\\{1\\pm\\sqrt{5},-2\\}",
    "1 - \\sqrt{19}; 1 + \\sqrt{19}", "x < 2 \\text{ or } x > 3", "3 and 5",
    "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
    "\\left[\\begin{array}{cc} 1 & 2 \\\\ 3 & 4 \\end{array}\\right]",
    "18 \\text{ dollars}", "18 dollars", "\\$32,\\!348", "864 \\mbox{ inches}^2", "90^\\circ", "145^{\\circ}", "90°",
    "50\\%", "52_8", "6 - 5i", "\\cot x", "\\sin^2 x + \\cos^2 x", "\\log_2 8", "(a+5)(b+2)", "5!", "|x-1|",
    "\\sqrt[3]{2}", "\\frac 59", ".0000672", "\\frac{270}7\\text{ degrees}", "f(x) = 2x+3", "7 \\times 6 = 42",
    "-\\infty", "\\mathbb{R}", "\\emptyset", "1 000",
])
def test_one_expression(text):
    assert is_expression(text)


@pytest.mark.parametrize("text", [
    "The answer is 5",  # prose: "the", "is"
    "So x = 5",
    "Thus 5",  # a word of four letters that is neither a function nor a unit
    "I think it might be 5 or 6",
    "x=3 is correct",
    "We get 12 + 30 = 42, and then subtract 2 to get 40.",
    "Evelyn",  # a word, not an expression (extraction reads a lone word on its own)
    "5?",  # a character math does not use
    "$5$ and $6$",  # two spans: the delimiters are not part of an expression
    "2 3",  # two numbers side by side are two answers, not a product
    "5 +",  # a dangling operator
    "(1, 2",  # an unclosed bracket
    "\\frac{1}",  # a missing argument
    "\\therefore x = 5",
    "",
])
def test_not_one_expression(text):
    assert not is_expression(text)


def test_huge_inputs_end_quickly_and_without_recursion_errors():
    # Each token is read once; nesting deeper than MAX_DEPTH is refused without exhausting the
    # stack; prose fails at its first word without the rest being cut into tokens. The
    # answers are checked, not the clock (benchmarks/grading.py prints extraction times).
    assert is_expression("1+" * 50_000 + "1")  # one huge expression, 100 kB
    assert not is_expression("(" * 50_000)
    assert not is_expression("{" * 50_000 + "1" + "}" * 50_000)
    assert not is_expression("\\sqrt" * 20_000 + "2")
    assert not is_expression("word " * 20_000)
    assert not is_expression("$" * 100_001)
