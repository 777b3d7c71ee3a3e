r"""A synthetic arithmetic curriculum for the embedded CPU default.

It feeds a ~1M-parameter character-level model on a 2-core CPU, so questions and solutions are
short and regular (every character is a token). Five levels:

    1  single-digit sums and differences       What is 3+5?          3+5=8. \boxed{8}
    2  two-digit sums and differences           What is 47+38?        47+30=77
       (tens first, then units: carries show)                         77+8=85. \boxed{85}
    3  one-digit x two-digit, or a+b+c          What is 7*23?         7*20=140
                                                                      7*3=21
                                                                      140+21=161. \boxed{161}
    4  two steps: a*b+c, (a+b)*c, remainder     Remainder of 47/5?    5*9=45
                                                                      47-45=2. \boxed{2}
    5  short word problems                      Tom has 12 apples and buys 3 bags of 4. How
                                                many apples now?      3*4=12
                                                                      12+12=24. \boxed{24}

Every solution writes one step per line and ends with `\boxed{ANSWER}`, for SFT warm-up.

Train and test are split by a hash of the question text (sha256, not Python's salted hash), so
the two never share a question whatever the seeds. Generation is deterministic from the seed.
"""

from __future__ import annotations

import hashlib
import random

from pillion.problem import Problem

LEVELS = (1, 2, 3, 4, 5)
TEST_FRACTION = 0.1  # share of the question space that belongs to the held-out split
_MAX_TRIES = 200  # draws per problem before a duplicate question is accepted (small levels)


def split_of(question: str) -> str:
    """'test' for a fixed TEST_FRACTION of all question texts, 'train' for the rest."""
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return "test" if h / 2**64 < TEST_FRACTION else "train"


def _finish(steps: list[str], answer: int) -> str:
    return "\n".join(steps) + f". \\boxed{{{answer}}}"


def _what(expr: str) -> str:
    return f"What is {expr}?"


def _level1(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        return _what(f"{a}+{b}"), [f"{a}+{b}={a + b}"], a + b
    a, b = max(a, b), min(a, b)  # no negative answers
    return _what(f"{a}-{b}"), [f"{a}-{b}={a - b}"], a - b


def _level2(rng: random.Random) -> tuple[str, list[str], int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    if op == "-":
        a, b = max(a, b), min(a, b)
    tens, units = b - b % 10, b % 10
    mid = a + tens if op == "+" else a - tens
    answer = a + b if op == "+" else a - b
    steps = [f"{a}{op}{tens}={mid}"]
    if units:
        steps.append(f"{mid}{op}{units}={answer}")
    return _what(f"{a}{op}{b}"), steps, answer


def _level3(rng: random.Random) -> tuple[str, list[str], int]:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(11, 99)
        tens, units = b - b % 10, b % 10
        if not units:
            return _what(f"{a}*{b}"), [f"{a}*{b}={a * b}"], a * b
        steps = [f"{a}*{tens}={a * tens}", f"{a}*{units}={a * units}",
                 f"{a * tens}+{a * units}={a * b}"]
        return _what(f"{a}*{b}"), steps, a * b
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 30)
    return _what(f"{a}+{b}+{c}"), [f"{a}+{b}={a + b}", f"{a + b}+{c}={a + b + c}"], a + b + c


def _level4(rng: random.Random) -> tuple[str, list[str], int]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 50)
        return _what(f"{a}*{b}+{c}"), [f"{a}*{b}={a * b}", f"{a * b}+{c}={a * b + c}"], a * b + c
    if kind == 1:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        steps = [f"{a}+{b}={a + b}", f"{a + b}*{c}={(a + b) * c}"]
        return _what(f"({a}+{b})*{c}"), steps, (a + b) * c
    d, n = rng.randint(2, 9), rng.randint(10, 99)
    q, r = divmod(n, d)
    return f"Remainder of {n}/{d}?", [f"{d}*{q}={d * q}", f"{n}-{d * q}={r}"], r


_NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva", "Max", "Zoe")
_ITEMS = ("apples", "pens", "cards", "eggs", "books", "coins")


def _level5(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:  # has a, buys b bags of c
        a, b, c = rng.randint(2, 20), rng.randint(2, 5), rng.randint(2, 9)
        q = f"{name} has {a} {item} and buys {b} bags of {c}. How many {item} now?"
        return q, [f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}"], a + b * c
    if kind == 1:  # has a, gives b friends c each
        b, c = rng.randint(2, 5), rng.randint(2, 9)
        a = b * c + rng.randint(0, 20)
        q = f"{name} has {a} {item} and gives {b} friends {c} each. How many are left?"
        return q, [f"{b}*{c}={b * c}", f"{a}-{b * c}={a - b * c}"], a - b * c
    b = rng.randint(2, 6)  # shares a among b kids equally: leftover
    a = rng.randint(b + 1, 60)
    k = a // b
    q = f"{name} shares {a} {item} equally among {b} kids. How many are left over?"
    return q, [f"{b}*{k}={b * k}", f"{a}-{b * k}={a - b * k}"], a - b * k


_MAKERS = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def _make(level: int, rng: random.Random) -> tuple[str, str, int]:
    """(question, solution, answer) for one draw at `level`."""
    question, steps, answer = _MAKERS[level](rng)
    return question, _finish(steps, answer), answer


def distinct_draws(n: int, levels, split: str, draw):
    """(level, draw(level)) n times, cycling through `levels`: each draw's question (its first
    item) is in `split`, and distinct from earlier ones until `_MAX_TRIES` draws in a row
    repeat (the level's question space is used up; duplicates are accepted from then on)."""
    seen: set[str] = set()
    exhausted: set[int] = set()  # levels whose distinct questions ran out: duplicates allowed
    for i in range(n):
        level = levels[i % len(levels)]
        for _ in range(_MAX_TRIES):
            item = draw(level)
            if split_of(item[0]) == split and (level in exhausted or item[0] not in seen):
                break
        else:
            exhausted.add(level)
            while split_of(item[0]) != split:
                item = draw(level)
        seen.add(item[0])
        yield level, item


def check_request(levels, split: str, known: tuple[int, ...]) -> None:
    """A curriculum's `generate` arguments: a split of the two, levels a non-empty subset of `known`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not levels or any(lv not in known for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {known}, got {list(levels)}")


def generate(n: int, levels: tuple[int, ...] | list[int] = (1, 2, 3), seed: int = 0,
             split: str = "train") -> list[Problem]:
    """`n` problems cycling through `levels`, deterministic from `seed`, all from `split`.

    Questions are distinct within one call while the level's question space allows it (level
    1 has ~150 questions, ~10% of them in test); after that duplicates are accepted.
    """
    check_request(levels, split, LEVELS)
    # A string seed is hashed with sha512 by `random`, so this is stable across processes.
    rng = random.Random(f"pillion-synthetic/{seed}/{split}")
    problems = []
    for level, (question, solution, answer) in distinct_draws(n, levels, split, lambda lv: _make(lv, rng)):
        digest = hashlib.sha256(question.encode()).hexdigest()[:12]
        problems.append(Problem(id=f"synthetic/{digest}", question=question, answer=str(answer),
                                solution=solution, source="synthetic", level=level,
                                meta={"split": split}))
    return problems
