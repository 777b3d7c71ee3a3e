"""The equivalence table: (pred, gold, expected), every category of pillion.rewards.math."""

import pytest

from pillion.rewards import grade_batch, math_equal

T = True
F = False

CASES = [
    # --- integers, signs, leading zeros (AIME golds are zero-padded) ---
    ("25", "025", T),
    ("025", "25", T),
    ("7", "007", T),
    ("0", "000", T),
    ("-3", "-3", T),
    ("+3", "3", T),
    ("70", "007", F),
    ("-3", "3", F),
    ("14401", "14400", F),  # a relative tolerance of 1e-4 would call these equal
    ("1000000001", "1000000000", F),
    ("250", "25", F),
    # --- thousands separators ---
    ("14,400", "14400", T),
    ("14400", "14,400", T),
    ("1,000,000", "1000000", T),
    ("1{,}234", "1234", T),
    ("1\\,234", "1234", T),
    ("1,234.5", "1234.5", T),
    ("1,234", "1243", F),
    ("1, 234", "1234", F),  # a list of two answers, not a number
    ("1,22", "1.22", T),  # a decimal comma: not a thousands separator (2 digits after it)
    ("1, 22", "1.22", F),  # a space after the comma: a list
    ("0, 0", "0", F),
    ("1,222", "1.222", F),  # thousands
    # --- units and currency ---
    ("5\\text{ cm}", "5", T),
    ("5 cm", "5", T),
    ("12 \\text{inches}", "12", T),
    ("\\$18", "18", T),
    ("18 dollars", "18", T),
    ("\\$1,000", "1000", T),
    ("€20", "20", T),
    ("3\\text{ cm}^2", "3", T),
    ("10 \\text{ meters}", "10", T),
    ("5 \\mbox{ hours}", "5", T),
    ("\\$18.50", "18.5", T),
    ("6 cm", "5", F),
    ("5\\text{ m/s}", "5", T),
    ("9.8\\text{ m/s}^2", "9.8", T),
    ("9.8\\text{ m/s}^2", "9.9", F),
    ("\\$17", "18", F),
    # --- percent ---
    ("50\\%", "50", T),
    ("50%", "50", T),
    ("50\\%", "0.5", T),
    ("12.5\\%", "12.5", T),
    ("25 percent", "25", T),
    ("50\\%", "5", F),
    ("40\\%", "0.5", F),
    # --- degrees ---
    ("90^\\circ", "90", T),
    ("90^{\\circ}", "90", T),
    ("90°", "90", T),
    ("45 degrees", "45", T),
    ("30^\\circ", "60", F),
    # --- fractions against decimals: exact for terminating; an exact gold takes a decimal only
    # within a relative 1e-6; a decimal gold with k places takes what rounds to it ---
    ("0.5", "\\frac{1}{2}", T),
    ("\\frac{1}{2}", "0.5", T),
    ("0.25", "1/4", T),
    ("2.50", "\\frac{5}{2}", T),
    ("0.333", "\\frac{1}{3}", F),  # |0.333 - 1/3| / (1/3) = 1e-3 > 1e-6
    ("0.3333", "1/3", F),
    ("0.3333333", "1/3", T),  # relative error 1e-7
    ("0.333333", "1/3", T),  # 1/3 - 0.333333 = 1/3000000: relative error exactly 1e-6
    ("0.33333", "1/3", F),  # relative error 1e-5
    ("0.667", "\\frac{2}{3}", F),
    ("0.6666667", "\\frac{2}{3}", T),
    ("0.438", "\\frac{7}{16}", F),  # 0.4375 rounded: the gold is exact
    ("\\frac{7}{16}", "0.438", T),  # 0.4375 rounds (half up) to the 3-place gold
    ("\\frac{1}{3}", "0.33", T),
    ("\\frac{1}{3}", "0.34", F),
    ("0.54", "0.5", T),  # the 1-place gold 0.5 takes [0.45, 0.55]
    ("0.56", "0.5", F),
    ("0.33", "\\frac{1}{3}", F),
    ("0.3", "\\frac{1}{3}", F),
    ("0.6", "\\frac{2}{3}", F),
    ("0.5", "0.50001", F),  # both exact decimals: exact comparison
    ("0.1875", "\\frac{3}{16}", T),
    ("0.19", "\\frac{3}{16}", F),
    ("0.125", "\\frac18", T),
    ("0.13", "\\frac18", F),
    ("0.\\overline{3}", "\\frac{1}{3}", T),
    ("0.1\\overline{6}", "1/6", T),
    ("0.\\overline{3}", "0.33", T),  # 1/3 exactly rounds to the 2-place gold
    ("0.33", "0.\\overline{3}", F),  # but 0.33 is not 1/3
    ("1.0", "1", T),
    ("1.01", "1", F),
    # --- \frac, \dfrac, \tfrac ---
    ("\\dfrac{3}{4}", "\\frac{3}{4}", T),
    ("\\tfrac{3}{4}", "\\frac34", T),
    ("\\frac{6}{8}", "\\frac{3}{4}", T),
    ("3/4", "\\dfrac{3}{4}", T),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", T),
    ("\\frac{4}{3}", "\\frac{3}{4}", F),
    ("\\frac{1}{2}", "-\\frac{1}{2}", F),
    ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}", T),
    # --- square roots ---
    ("\\sqrt{2}", "\\sqrt2", T),
    ("2\\sqrt{3}", "\\sqrt{12}", T),
    ("\\sqrt{12}", "2\\sqrt{3}", T),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", T),
    ("1.414", "\\sqrt{2}", F),
    ("1.41", "\\sqrt{2}", F),
    ("1.4142136", "\\sqrt{2}", T),
    ("\\sqrt{2}", "1.41", T),
    ("1.4", "\\sqrt{2}", F),
    ("\\sqrt{3}", "\\sqrt{2}", F),
    ("3\\sqrt{2}", "2\\sqrt{3}", F),
    ("\\sqrt{8}", "2\\sqrt{2}", T),
    # --- pi ---
    ("\\pi", "π", T),
    ("2\\pi", "2 \\pi", T),
    ("3.14", "\\pi", F),  # a rounded decimal is not the exact gold
    ("3.1416", "\\pi", F),  # relative error 2.3e-6
    ("3.1415927", "\\pi", T),
    ("\\pi", "3.14", T),
    ("\\pi", "3.15", F),
    ("3.2", "\\pi", F),
    ("\\frac{\\pi}{2}", "\\frac{\\pi}{4}", F),
    ("4\\pi", "2\\pi", F),
    ("\\frac{\\pi}{3}", "\\frac{1}{3}\\pi", T),
    # --- mixed numbers ---
    ("3\\frac{1}{2}", "\\frac{7}{2}", T),
    ("3 1/2", "7/2", T),
    ("3\\frac{1}{2}", "3.5", T),
    ("-2\\frac{1}{4}", "-\\frac{9}{4}", T),
    ("3\\frac{1}{2}", "\\frac{3}{2}", F),
    # --- scientific notation: never Euler's e ---
    ("1.5e3", "1500", T),
    ("1.5E3", "1500", T),
    ("1.5 \\times 10^{3}", "1500", T),
    ("1.5\\times10^3", "1500", T),
    ("2.5 \\cdot 10^{-2}", "0.025", T),
    ("10^{6}", "1000000", T),
    ("1e-3", "0.001", T),
    ("1.5e3", "1.5 \\times 10^3", T),
    ("1.5e3", "150", F),
    ("1.5e3", "4.5", F),  # 1.5 * e * 3 would be about 12.2; neither reading is 4.5
    ("2e5", "20000", F),
    # --- intervals and their ends ---
    ("(1,2)", "(1, 2)", T),
    ("[1,2]", "[1, 2]", T),
    ("[1,2)", "[1,2)", T),
    ("(-\\infty, 3]", "(-\\infty,3]", T),
    ("(-∞, 3]", "(-\\infty, 3]", T),
    ("[0, \\infty)", "[0,\\infty)", T),
    ("(1,2)", "[1,2]", F),
    ("[1,2)", "(1,2]", F),
    ("(-\\infty, 3)", "(-\\infty, 3]", F),
    ("[0, 5]", "[0, 6]", F),
    ("(-\\infty,1)\\cup(2,\\infty)", "(-\\infty, 1) \\cup (2, \\infty)", T),
    ("(-\\infty,1]\\cup(2,\\infty)", "(-\\infty, 1) \\cup (2, \\infty)", F),
    ("\\left[ 2, 5 \\right)", "[2,5)", T),
    # --- sets (order free), tuples (order matters), "find all" ---
    ("\\{1,2,3\\}", "\\{3,2,1\\}", T),
    ("1, 2", "2, 1", T),
    ("2, 1", "\\{1, 2\\}", T),
    ("-1, 1", "1,-1", T),
    ("\\{1,2\\}", "\\{1,2,3\\}", F),
    ("1", "1, 2", F),  # one root of a "find all" is not the answer
    ("2", "-2, 2", F),
    ("1, 2, 2", "1, 2", T),  # a list of solutions is a set: repeats do not count
    ("1, 2, 2", "1, 2, 3", F),
    ("(1,2)", "(2,1)", F),
    ("(3, 4)", "(3,4)", T),
    ("(1,2,3)", "(1, 2, 3)", T),
    ("(1,3,2)", "(1,2,3)", F),
    ("(0.5, 2)", "(\\frac{1}{2}, 2)", T),
    ("(\\sqrt{2}, 1)", "(\\sqrt2, 1)", T),
    ("(\\sqrt{2}, 1)", "(1, \\sqrt{2})", F),
    ("3 \\text{ and } 5", "3, 5", T),
    ("3 and 5", "5, 3", T),
    # --- equations against values ---
    ("x=3", "3", T),
    ("x = 3", "3", T),
    ("3", "x=3", T),
    ("y = 2x + 3", "2x+3", T),
    ("k=5", "5", T),
    ("x=4", "3", F),
    ("x = -2", "2", F),
    ("x^2+y^2=1", "x^2+y^2=1", T),
    ("y=2x+3", "y=2x+4", F),
    ("x=1, y=-2", "(1,-2)", T),  # coordinates assigned one by one: the point, x before y
    ("y=-2, x=1", "(1,-2)", T),
    ("x=-2, y=1", "(1,-2)", F),
    # --- number words, when they are the whole answer ---
    ("five", "5", T),
    ("Twenty.", "20", T),
    ("five", "6", F),
    # --- multiple choice letters ---
    ("C", "C", T),
    ("(C)", "C", T),
    ("C", "(C)", T),
    ("\\text{(C)}", "C", T),
    ("\\textbf{(C)}", "(C)", T),
    ("c", "C", T),
    ("(B) 42", "B", T),
    ("B", "C", F),
    ("(A)", "C", F),
    ("42", "C", F),
    # --- plain-text answers ---
    ("Monday", "\\text{Monday}", T),
    ("\\text{monday}", "Monday", T),
    ("odd", "\\text{odd}", T),
    ("Even", "even", T),
    ("New York", "new york", T),
    ("dynamo", "Monday", F),  # sympy would read both as a product of the same six symbols
    ("odd", "even", F),
    ("Tuesday", "Monday", F),
    ("5", "\\text{Monday}", F),
    # --- matrices and vectors ---
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", T),
    ("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
    ("\\begin{pmatrix}0.5\\\\2\\end{pmatrix}", "\\begin{pmatrix}\\frac{1}{2}\\\\2\\end{pmatrix}", T),
    ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
    ("\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
    ("\\begin{pmatrix}1&2&3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
    ("\\begin{pmatrix}\\sqrt{4}\\\\x\\end{pmatrix}", "\\begin{pmatrix}2\\\\x\\end{pmatrix}", T),
    # --- symbolic expressions ---
    ("x^2+2x+1", "(x+1)^2", T),
    ("(x+1)(x-1)", "x^2-1", T),
    ("2(x+1)", "2x+2", T),
    ("\\frac{x}{2}", "0.5x", T),
    ("x^2-1", "x^2+1", F),
    ("\\sin^2 x + \\cos^2 x", "1", T),
    ("\\log_2 8", "3", T),
    ("\\frac{e^2}{e}", "e", T),
    ("2^{10}", "1024", T),
    ("2^{10}", "1023", F),
    ("\\binom{5}{2}", "10", T),
    ("5!", "120", T),
    ("3+4i", "4i+3", T),
    ("3+4i", "3-4i", F),
    ("a+b", "b+a", T),
    ("a-b", "b-a", F),
    # --- tiny and huge numbers: no tolerance turns different numbers equal ---
    ("\\frac{1}{2006!}", "\\frac{1}{2004!}", F),
    ("\\frac{1}{2006!}", "\\frac{1}{2006!}", T),
    ("10^{-20}", "2 \\times 10^{-20}", F),
    ("e^{-100}", "e^{-101}", F),
    ("2^{100}", "2^{100}+1", F),
    ("2^{100}", "1267650600228229401496703205376", T),
    # --- sets named in words or symbols ---
    ("\\mathbb{R}", "(-\\infty, \\infty)", T),
    ("\\text{All real numbers}", "\\mathbb{R}", T),
    ("\\varnothing", "\\emptyset", T),
    ("No solution", "\\text{no solution}", T),
    ("\\emptyset", "\\{0\\}", F),
    ("\\mathbb{R}", "[0, \\infty)", F),
    # --- missing or empty answers ---
    (None, "5", F),
    ("", "5", F),
    ("5", "", F),
]


def test_table_is_large_and_balanced():
    negatives = sum(1 for *_, expected in CASES if not expected)
    assert len(CASES) >= 150
    assert 0.28 <= negatives / len(CASES) <= 0.45, negatives / len(CASES)


@pytest.mark.parametrize("pred,gold,expected", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_equivalence_table(pred, gold, expected):
    assert math_equal(pred, gold, timeout=5.0) is expected


def test_pool_agrees_with_serial_on_the_table():
    # The pool is the fast path for training; math_equal one by one is its reference.
    preds = [p for p, _, _ in CASES]
    golds = [g for _, g, _ in CASES]
    assert grade_batch(preds, golds, timeout=5.0, workers=2) == [e for *_, e in CASES]
