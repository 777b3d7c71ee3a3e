"""A synthetic code curriculum for the embedded CPU default: write a one-line function.

Like the arithmetic curriculum (`synthetic.py`) it is sized for a ~1M-parameter character-level
model on a 2-core CPU: the question states the function and the expression, the answer is a
short ```python block, and the tests are asserts on a few argument values. Three levels:

    1  two arguments, one operator (+, -, *), either order,     Write f(a, b) that returns b - a.
       or an argument and a constant                           Write g(x, y) that returns 3 * y.
    2  three arguments, two operators, in any order, with or   Write calc(p, q, r) that returns
       without parentheses                                     (r + p) * q.
    3  the operation in words: sum, difference, product,       Write h(m, n) that returns the
       larger / smaller (max / min), remainder, square, twice  larger of m and n.

Solutions are a fenced block, the function on two lines:

    ```python
    def f(a, b):
        return b - a
    ```

and every problem has three asserts (`assert f(3, 7) == 4`) on argument values drawn from the
question's hash, so a problem's tests do not depend on the seed; the remainder never divides by
zero. Train and test are split by the same question hash as the arithmetic curriculum
(`synthetic.split_of`), so the held-out questions are never trained on. Generation is
deterministic from the seed.
"""

from __future__ import annotations

import functools
import hashlib
import random

from pillion.data.synthetic import check_request, distinct_draws
from pillion.problem import Problem

LEVELS = (1, 2, 3)
NUM_TESTS = 3

_NAMES = ("f", "g", "h", "add", "calc", "fn", "op", "func")
_PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("u", "v"), ("i", "j"))
_TRIPLES = (("a", "b", "c"), ("x", "y", "z"), ("p", "q", "r"), ("i", "j", "k"))
_OPS = "+-*"
# Level 3: (words with {0} and {1} for the arguments, the Python expression, uses the second argument)
_WORDS = (
    ("the sum of {0} and {1}", "{0} + {1}"),
    ("the difference of {0} and {1}", "{0} - {1}"),
    ("the product of {0} and {1}", "{0} * {1}"),
    ("the larger of {0} and {1}", "max({0}, {1})"),
    ("the smaller of {0} and {1}", "min({0}, {1})"),
    ("the remainder of {0} divided by {1}", "{0} % {1}"),
    ("{0} squared", "{0} * {0}"),
    ("twice {0}", "2 * {0}"),
)


def _level1(rng: random.Random) -> tuple[str, tuple[str, ...], str, str]:
    """(name, args, expression as stated, expression in Python): here the two are the same."""
    name, args = rng.choice(_NAMES), rng.choice(_PAIRS)
    op = rng.choice(_OPS)
    if rng.random() < 0.5:
        left, right = rng.sample(args, 2)  # either order: a - b or b - a
    else:
        left, right = rng.choice(args), str(rng.randint(1, 9))
        if rng.random() < 0.5:
            left, right = right, left
    expr = f"{left} {op} {right}"
    return name, args, expr, expr


def _level2(rng: random.Random) -> tuple[str, tuple[str, ...], str, str]:
    name, args = rng.choice(_NAMES), rng.choice(_TRIPLES)
    a, b, c = rng.sample(args, 3)
    op1, op2 = rng.choice(_OPS), rng.choice(_OPS)
    expr = f"({a} {op1} {b}) {op2} {c}" if rng.random() < 0.5 else f"{a} {op1} {b} {op2} {c}"
    return name, args, expr, expr


def _level3(rng: random.Random) -> tuple[str, tuple[str, ...], str, str]:
    name, args = rng.choice(_NAMES), rng.choice(_PAIRS)
    words, python = rng.choice(_WORDS)
    first, second = rng.sample(args, 2)
    return name, args, words.format(first, second), python.format(first, second)


_MAKERS = {1: _level1, 2: _level2, 3: _level3}


@functools.cache
def _compiled(python: str):
    return compile(python, "<synthetic_code>", "eval")  # a few thousand distinct expressions at most


def _tests(name: str, args: tuple[str, ...], python: str, question: str) -> list[str]:
    """NUM_TESTS asserts with argument values drawn from the question's hash."""
    rng = random.Random(hashlib.sha256(question.encode()).hexdigest())
    tests = []
    for _ in range(NUM_TESTS):
        values = {arg: rng.randint(1, 20) for arg in args}  # >= 1: a remainder never divides by 0
        expected = eval(_compiled(python), {"max": max, "min": min}, values)  # our own expression text
        call = ", ".join(str(values[arg]) for arg in args)
        tests.append(f"assert {name}({call}) == {expected}")
    return tests


def reference_solution(name: str, args: tuple[str, ...], python: str) -> str:
    """The function as a ```python block: what the tests pass and SFT trains on."""
    return f"```python\ndef {name}({', '.join(args)}):\n    return {python}\n```"


def _draw(level: int, rng: random.Random) -> tuple[str, str, tuple[str, ...], str]:
    """(question, function name, arguments, Python expression) for one draw at `level`."""
    name, args, stated, python = _MAKERS[level](rng)
    return f"Write {name}({', '.join(args)}) that returns {stated}.", name, args, python


def generate(n: int, levels: tuple[int, ...] | list[int] = (1, 2), seed: int = 0,
             split: str = "train") -> list[Problem]:
    """`n` code problems cycling through `levels`, deterministic from `seed`, all from `split`.

    Questions are distinct within one call while the level's question space allows it (level
    3 has ~770 questions, ~10% of them in test); after that duplicates are accepted.
    """
    check_request(levels, split, LEVELS)
    rng = random.Random(f"pillion-synthetic-code/{seed}/{split}")
    problems = []
    for level, (question, name, args, python) in distinct_draws(n, levels, split, lambda lv: _draw(lv, rng)):
        digest = hashlib.sha256(question.encode()).hexdigest()[:12]
        problems.append(Problem(id=f"synthetic_code/{digest}", question=question, answer="",
                                solution=reference_solution(name, args, python), source="synthetic_code",
                                level=level, kind="code", tests=_tests(name, args, python, question),
                                meta={"split": split, "entry_point": name}))
    return problems
