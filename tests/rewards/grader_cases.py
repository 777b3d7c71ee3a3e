r"""Hand-written (completion, gold, equal, question) cases for the grader, by category, and the
two graders compared on them: pillion's (`score` in the fallback style, the default of
`pillion eval`) and math-verify's own recipe (`verify(parse(gold), parse(completion))`).

The labels follow the grading rules documented in `pillion/rewards/math.py` and
`extract.py`, decided before running either grader. About 40% are NOT equal: near-miss
numbers, a wrong set element, a wrong interval end, a wrong matrix entry, an answer only
inside <think>, a rounded decimal against an exact irrational.

Used by tests/rewards/test_grader_parity.py and benchmarks/grader_parity.py. math-verify's
default `parse` runs sympy's `parse_expr` on what it extracts; that is acceptable here only
because these strings are ours, never a model's (pillion's grader never does it).
"""

from __future__ import annotations

T, F = True, False

CASES: dict[str, list[tuple]] = {
    # 1. No \boxed{}: answer phrases in several languages, bold, the last math span or number.
    "no_box": [
        ("Final Answer: The largest $n$ is 34.", "34", T),
        ("Answer $ 9 $", "9", T),
        ("so the result is **73**", "73", T),
        ("Donc, la réponse est 105", "105", T),
        ("所以答案是 4000", "4000", T),
        ("The answer is for sure D, it can't be A or B", "D", T),
        ("We add the two parts and get 12 + 30 = 42.", "42", T),
        ("Thus the area equals $\\frac{3}{4}$.", "\\frac{3}{4}", T),
        ("The final answer is: $\\sqrt{2}$", "\\sqrt{2}", T),
        ("**Final Answer:** 1,250", "1250", T),
        ("The sum is 17, so the final answer is 17.", "17", T),
        ("Por lo tanto, la respuesta es 64.", "64", T),
        ("Die Antwort ist 12.", "12", T),
        ("Ответ: 7", "7", T),
        ("最终答案：$\\frac{1}{2}$", "0.5", T),
        ("Solving gives $x = 5$.", "5", T),
        ("Answer: (B)", "B", T),
        ("I computed \\(2^{10}\\), which is \\(1024\\).", "1024", T),
        ("Therefore, the answer is $-3$ because the function decreases.", "-3", T),
        ("The answer is 3.5 cm.", "3.5", T),
        ("\\[ \\frac{\\pi}{4} \\]", "\\frac{\\pi}{4}", T),
        ("She has 72 left.\n#### 72", "72", T),
        ("<answer>15</answer>", "15", T),
        ("The answer is 35.", "34", F),
        ("Final Answer: The largest $n$ is 33.", "34", F),
        ("so the result is **74**", "73", F),
        ("The answer is for sure C, it can't be A or B", "D", F),
        ("We get 12 + 30 = 42, and then subtract 2 to get 40.", "42", F),
        ("$x = 4$", "5", F),
        ("答案是 4001", "4000", F),
        ("I am not sure how to solve this.", "5", F),
        ("Answer: (B)", "C", F),
        ("La réponse est 106.", "105", F),
        ("The area is $\\frac{3}{5}$.", "\\frac{3}{4}", F),
        ("First I thought 5, but the answer is 6.", "5", F),
        ("So she has twelve apples. The answer is twelve.", "12", T),
        ("The answer is eleven.", "12", F),
    ],
    # 2. Several boxes (or math spans) forming one answer; an earlier separate box is a draft.
    "multi_box": [
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "\\{1,2,3\\}", T),
        ("\\boxed{1}, \\boxed{2}, \\boxed{3}", "1, 2, 3", T),
        ("\\boxed{(2,2)} and \\boxed{(6,2)}", "(2,2),(6,2)", T),
        ("$x=1$ or $x=-2$", "1, -2", T),
        ("The solutions are $\\boxed{x_1 = 3}$ and $\\boxed{x_2 = -3}$.", "3, -3", T),
        ("\\boxed{-1} \\quad \\boxed{4}", "4, -1", T),
        ("So \\boxed{2} or \\boxed{5}.", "\\{2, 5\\}", T),
        ("First draft \\boxed{3}. Rechecking the arithmetic, it is wrong. The answer is \\boxed{4}.", "4", T),
        ("\\boxed{\\frac{1}{2}} and \\boxed{\\frac{3}{2}}", "\\frac12, \\frac32", T),
        ("$\\boxed{x=1}$, $\\boxed{x=2}$", "1,2", T),
        ("The roots are \\boxed{\\sqrt{2}} and \\boxed{-\\sqrt{2}}.", "\\pm\\sqrt{2}", T),
        ("\\boxed{1}, \\boxed{2}", "1, 2, 3", F),
        ("\\boxed{(2,2)} and \\boxed{(6,3)}", "(2,2),(6,2)", F),
        ("$x=1$ or $x=2$", "1, -2", F),
        ("\\boxed{1}. But wait, that misses a case; redoing it: \\boxed{2}", "1, 2", F),
        ("\\boxed{1, 2}", "1", F),
        ("The answer is \\boxed{3} and \\boxed{4}", "3", F),
        ("\\boxed{2} or \\boxed{5}", "\\{2, 6\\}", F),
        ("\\boxed{x_1 = 3}, \\boxed{x_2 = 3}", "3, -3", F),
        ("\\boxed{(1,2)}, \\boxed{(3,4)}", "(1,2),(4,3)", F),
        ("\\boxed{-1} \\quad \\boxed{4}", "-1, 4, 5", F),
        ("The point is $\\boxed{x=1}$, $\\boxed{y=-2}$.", "(1,-2)", T),
        ("So $y = -2$ and $x = 1$.", "(1, -2)", T),
        ("The point is $\\boxed{x=1}$, $\\boxed{y=2}$.", "(1,-2)", F),
        ("The roots are \\boxed{\\sqrt{2}} and \\boxed{\\sqrt{3}}.", "\\pm\\sqrt{2}", F),
    ],
    # 3. Numbers: decimal comma, thousands separators, currency, units, percent words.
    "numbers": [
        ("\\boxed{1,22}", "1.22", T),
        ("\\boxed{1,222}", "1222", T),
        ("\\boxed{11,\\! 111,\\! 100}", "11111100", T),
        ("\\boxed{1 000}", "1000", T),
        ("The final answer is 25\\", "25", T),
        ("\\boxed{\\$1,250}", "1250", T),
        ("\\boxed{1,000.99€}", "1000.99", T),
        ("\\boxed{28 percentage}", "28\\%", T),
        ("\\boxed{12,5}", "12.5", T),
        ("\\boxed{3{,}600}", "3600", T),
        ("\\boxed{\\$ 18.50}", "18.5", T),
        ("\\boxed{0,75}", "\\frac{3}{4}", T),
        ("\\boxed{45\\%}", "0.45", T),
        ("\\boxed{1\\,000\\,000}", "10^6", T),
        ("\\boxed{2.50 \\text{ dollars}}", "2.5", T),
        ("\\boxed{1,23}", "1.22", F),
        ("\\boxed{1,222}", "1.222", F),
        ("\\boxed{11,\\! 111,\\! 101}", "11111100", F),
        ("\\boxed{1 001}", "1000", F),
        ("\\boxed{\\$1,205}", "1250", F),
        ("\\boxed{28 percentage}", "0.29", F),
        ("\\boxed{1,000.98€}", "1000.99", F),
        ("\\boxed{12,5}", "125", F),
        ("\\boxed{1 000}", "100", F),
    ],
    # 4. Relations and intervals.
    "relations": [
        ("\\boxed{x \\geq 3}", "x >= 3", T),
        ("\\boxed{x ≥ 3}", "x \\ge 3", T),
        ("\\boxed{x \\lt 5}", "x < 5", T),
        ("\\boxed{x \\neq 2}", "x != 2", T),
        ("\\boxed{0 < x < 12.5}", "(0, 12.5)", T),
        ("\\boxed{x < 3}", "(-\\infty, 3)", T),
        ("\\boxed{-2 \\le x \\le 7}", "x \\in [-2, 7]", T),
        ("\\boxed{[3, \\infty)}", "x \\geq 3", T),
        ("\\boxed{x > -1}", "(-1, \\infty)", T),
        ("\\boxed{5 > x \\geq 1}", "[1, 5)", T),
        ("\\boxed{x < -1 \\text{ or } x > 2}", "(-\\infty,-1)\\cup(2,\\infty)", T),
        ("\\boxed{\\frac{1}{2} \\le x < 3}", "[0.5, 3)", T),
        ("\\boxed{x > 3}", "x >= 3", F),
        ("\\boxed{0 < x < 12}", "(0, 12.5)", F),
        ("\\boxed{x \\le 3}", "(-\\infty, 3)", F),
        ("\\boxed{-2 < x \\le 7}", "x \\in [-2, 7]", F),
        ("\\boxed{(3, \\infty)}", "x \\geq 3", F),
        ("\\boxed{x = 2}", "x \\neq 2", F),
        ("\\boxed{x < 3}", "(3, \\infty)", F),
        ("\\boxed{x < -1 \\text{ or } x > 2}", "(-\\infty,-1]\\cup(2,\\infty)", F),
        ("\\boxed{x \\geq -3}", "[3, \\infty)", F),
    ],
    # 5. Matrices and vectors; entries under the precision rule.
    "matrices": [
        ("\\boxed{\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
        ("\\boxed{\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]}",
         "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix}0.5\\\\-2\\end{pmatrix}}", "\\begin{pmatrix}\\frac12\\\\-2\\end{pmatrix}", T),
        ("\\boxed{\\begin{bmatrix}1.4142136 & 0\\\\0 & 1\\end{bmatrix}}",
         "\\begin{pmatrix}\\sqrt2&0\\\\0&1\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix}\\frac13\\\\\\frac23\\end{pmatrix}}",
         "\\begin{pmatrix}0.33\\\\0.67\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix} 2 & -1 \\\\ 0 & 3 \\end{pmatrix}}", "\\begin{bmatrix}2&-1\\\\0&3\\end{bmatrix}", T),
        ("\\boxed{\\begin{pmatrix}\\sqrt{4} & 1\\end{pmatrix}}", "\\begin{pmatrix}2 & 1\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix}1+1 & 3\\\\ 0 & 2\\cdot 2\\end{pmatrix}}",
         "\\begin{pmatrix}2&3\\\\0&4\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix} -\\frac{3}{5} \\\\ \\frac{4}{5} \\end{pmatrix}}",
         "\\begin{pmatrix} -0.6 \\\\ 0.8 \\end{pmatrix}", T),
        ("\\boxed{\\left(\\begin{array}{c}1\\\\2\\end{array}\\right)}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", T),
        ("\\boxed{\\begin{bmatrix}x+x&1\\\\0&x\\end{bmatrix}}", "\\begin{pmatrix}2x & 1\\\\0 & x\\end{pmatrix}", T),
        ("\\boxed{\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}1&2&3&4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", F),
        ("\\boxed{\\begin{bmatrix}1.41 & 0\\\\0 & 1\\end{bmatrix}}",
         "\\begin{pmatrix}\\sqrt2&0\\\\0&1\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}0.3\\\\0.7\\end{pmatrix}}", "\\begin{pmatrix}0.33\\\\0.67\\end{pmatrix}", F),
        ("\\boxed{\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]}",
         "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}-0.6\\\\0.8\\end{pmatrix}}", "\\begin{pmatrix}\\frac35\\\\\\frac45\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}1\\\\2\\\\3\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", F),
        ("\\boxed{\\begin{pmatrix}x&1\\\\0&x\\end{pmatrix}}", "\\begin{pmatrix}x&1\\\\0&2x\\end{pmatrix}", F),
    ],
    # 6. Plain-text and sympy-style math; i the imaginary unit unless the question indexes by i.
    "plain_text": [
        ("The answer is pi/2", "\\frac{\\pi}{2}", T),
        ("The answer is -1 + exp(16)", "e^{16} - 1", T),
        ("\\boxed{-2*pi}", "-2\\pi", T),
        ("\\boxed{14.0 + -1.0i}", "14 - i", T),
        ("\\boxed{e^{i\\pi}}", "-1", T),
        ("\\boxed{\\frac{1}{\\sqrt{n}}}", "\\sqrt{1/n}", T),
        ("\\boxed{sqrt(2)/2}", "\\frac{\\sqrt{2}}{2}", T),
        ("\\boxed{x**2 + 2*x + 1}", "(x+1)^2", T),
        ("\\boxed{3*sqrt(3)}", "\\sqrt{27}", T),
        ("\\boxed{2^(1/2)}", "\\sqrt{2}", T),
        ("\\boxed{i^2}", "-1", T),
        ("\\boxed{\\sqrt{x^2}}", "x", T),
        ("\\boxed{(1+i)^2}", "2i", T),
        ("\\boxed{ln(e^3)}", "3", T),
        ("\\boxed{infinity}", "\\infty", T),
        ("\\boxed{4i}", "4i", T, "Let $a_i = 2i$ for each $i$. Find $a_i + a_i$ in terms of $i$."),
        ("The answer is pi/3", "\\frac{\\pi}{2}", F),
        ("\\boxed{-1 + exp(15)}", "e^{16}-1", F),
        ("\\boxed{2*pi}", "-2\\pi", F),
        ("\\boxed{14.0 + 1.0i}", "14 - i", F),
        ("\\boxed{e^{i\\pi}}", "1", F),
        ("\\boxed{sqrt(3)/2}", "\\frac{\\sqrt{2}}{2}", F),
        ("\\boxed{x**2 + 2*x - 1}", "(x+1)^2", F),
        ("\\boxed{\\frac{1}{n}}", "\\sqrt{1/n}", F),
        ("\\boxed{(1+i)^2}", "2", F),
        ("\\boxed{i^2}", "-1", F, "For each $i$ with $i = 1, \\dots, n$ let $x_i = i$. Find $x_i^2$."),
    ],
    # 7. Arithmetic left in the answer, evaluated exactly.
    "arithmetic": [
        ("\\boxed{0.1 + 0.2}", "0.3", T),
        ("\\boxed{2^{10}}", "1024", T),
        ("\\boxed{3 \\times 4 + 1}", "13", T),
        ("\\boxed{\\frac{6}{4} + \\frac{1}{2}}", "2", T),
        ("\\boxed{(2+3)^2}", "25", T),
        ("\\boxed{100 - 3 \\cdot 7}", "79", T),
        ("\\boxed{12 \\div 4}", "3", T),
        ("\\boxed{2 \\times 10^{3} + 5}", "2005", T),
        ("So we need $7 \\times 6 = 42$ chairs.", "42", T),
        ("\\boxed{\\frac{1}{2} \\cdot 8}", "4", T),
        ("\\boxed{-3 + 5}", "2", T),
        ("\\boxed{1.5 \\times 4}", "6", T),
        ("\\boxed{1/3 + 1/3}", "0.67", T),
        ("\\boxed{0.1 + 0.2}", "0.4", F),
        ("\\boxed{2^{10}}", "1000", F),
        ("\\boxed{3 \\times 4 + 1}", "12", F),
        ("\\boxed{\\frac{6}{4} + \\frac{1}{4}}", "2", F),
        ("\\boxed{(2+3)^2}", "13", F),
        ("\\boxed{100 - 3 \\cdot 7}", "679", F),
        ("\\boxed{12 \\div 4}", "48", F),
        ("\\boxed{2^{-1}}", "2", F),
        ("\\boxed{0.1 \\times 3}", "0.33", F),
    ],
    # 8. Multisets written as sets: repeats do not count; a wrong or missing element does.
    "multisets": [
        ("\\boxed{\\{1, 2, 2\\}}", "\\{1, 2\\}", T),
        ("\\boxed{\\{3, 3, 3\\}}", "\\{3\\}", T),
        ("\\boxed{\\{2, 1, 2, 1\\}}", "\\{1, 2\\}", T),
        ("\\boxed{\\{-1, 1, 1\\}}", "\\{1, -1\\}", T),
        ("\\boxed{1, 1, 4}", "1, 4", T),
        ("\\boxed{\\{\\frac{1}{2}, 0.5, 2\\}}", "\\{\\frac12, 2\\}", T),
        ("\\boxed{\\{(1,2), (1,2), (3,4)\\}}", "\\{(1,2),(3,4)\\}", T),
        ("\\boxed{\\{\\sqrt{2}, \\sqrt{2}, 1\\}}", "\\{1, \\sqrt{2}\\}", T),
        ("\\boxed{\\{1,2\\}}", "\\{2, 1, 1\\}", T),
        ("\\boxed{\\{1, 2, 2\\}}", "\\{1, 2, 3\\}", F),
        ("\\boxed{\\{1, 2, 2\\}}", "\\{1\\}", F),
        ("\\boxed{\\{3, 3\\}}", "\\{3, 4\\}", F),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2, 4\\}", F),
        ("\\boxed{\\{-1, 1, 1\\}}", "\\{1\\}", F),
        ("\\boxed{\\{(1,2), (1,2)\\}}", "\\{(1,2),(2,1)\\}", F),
        ("\\boxed{\\{\\sqrt{2}, \\sqrt{2}\\}}", "\\{\\sqrt{2}, -\\sqrt{2}\\}", F),
        ("\\boxed{(1, 2, 2)}", "\\{1, 2\\}", F),
        ("\\boxed{\\{1, 2, 2\\}}", "(1, 2)", F),
    ],
    # Stays NOT equal: an answer only inside the reasoning; what follows </think> counts.
    "think": [
        ("<think>So it is \\boxed{5}.</think> I cannot decide.", "5", F),
        ("<think>The answer is 12.</think>", "12", F),
        ("<think>Working: \\boxed{7}", "7", F),
        ("<think>x = 3, so \\boxed{3}</think>\nThe final answer is 4.", "3", F),
        ("<think>compute: 42</think>\n\n", "42", F),
        ("reasoning ... </think> \\boxed{3}", "4", F),
        ("<think>Maybe 5? No.</think> The answer is \\boxed{6}.", "6", T),
        ("<think>draft \\boxed{1}</think><answer>2</answer>", "2", T),
        ("<think>\\boxed{9}</think> So $9$.", "9", T),
        ("the prompt opened the reasoning ... </think> Final Answer: 8", "8", T),
    ],
    # Stays NOT equal: a rounded decimal against an exact gold; a decimal gold accepts what
    # rounds to it.
    "precision": [
        ("\\boxed{3.14}", "\\pi", F),
        ("\\boxed{1.414}", "\\sqrt{2}", F),
        ("\\boxed{0.333}", "\\frac{1}{3}", F),
        ("\\boxed{2.718}", "e", F),
        ("\\boxed{0.67}", "\\frac{2}{3}", F),
        ("\\boxed{1.73}", "\\sqrt{3}", F),
        ("\\boxed{6.28}", "2\\pi", F),
        ("\\boxed{0.7071}", "\\frac{\\sqrt{2}}{2}", F),
        ("\\boxed{14401}", "14400", F),
        ("\\boxed{0.5001}", "\\frac{1}{2}", F),
        ("\\boxed{\\pi}", "3.14", T),
        ("\\boxed{\\frac{1}{3}}", "0.33", T),
        ("\\boxed{3.14159265}", "\\pi", T),
        ("\\boxed{0.3333333}", "\\frac{1}{3}", T),
        ("\\boxed{\\sqrt{2}}", "1.414", T),
        ("\\boxed{2.7182818}", "e", T),
        ("\\boxed{0.333}", "0.33", T),
        ("\\boxed{1.41421356}", "\\sqrt{2}", T),
    ],
}


def rows(category: str) -> list[tuple[str, str, bool, str]]:
    """(completion, gold, equal, question) of a category; question "" when not given."""
    return [(c[0], c[1], c[2], c[3] if len(c) > 3 else "") for c in CASES[category]]


def pillion_verdicts(category: str, pool) -> list[bool]:
    """pillion's grader: extraction in the fallback style, then `math_equal`, via `score_batch`."""
    from types import SimpleNamespace

    from pillion.problem import Problem
    from pillion.rewards import RewardConfig, score_batch

    cases = rows(category)
    problems = [Problem(id=f"{category}/{i}", question=q, answer=gold) for i, (_, gold, _, q) in enumerate(cases)]
    completions = [SimpleNamespace(text=text, ids=[0], finish_reason="stop") for text, *_ in cases]
    results = score_batch(problems, completions, RewardConfig(answer_style="fallback"), pool=pool)
    return [r.correct is True for r in results]


def math_verify_verdict(text: str, gold: str) -> bool:
    """math-verify as its README uses it: the gold parsed as LaTeX, the completion with the
    default extraction (LaTeX and plain expressions)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    gold_parsed = parse(f"${gold}$") or parse(gold)
    return bool(verify(gold_parsed, parse(text)))


def agreement() -> dict[str, tuple[int, int, int]]:
    """{category: (cases, pillion agreeing with the label, math-verify agreeing)}."""
    from pillion.rewards import GradingPool

    table = {}
    with GradingPool(workers=2) as pool:
        for category in CASES:
            labels = [equal for _, _, equal, _ in rows(category)]
            ours = pillion_verdicts(category, pool)
            theirs = [math_verify_verdict(text, gold) for text, gold, _, _ in rows(category)]
            table[category] = (len(labels), sum(a == b for a, b in zip(ours, labels)),
                               sum(a == b for a, b in zip(theirs, labels)))
    return table
