"""Answers graded per second: math-verify alone, serial `math_equal` and a `GradingPool`,
side by side on one answer set; the slowest pathological call against its timeout; and
the extraction time of degenerate 100 kB completions.

A synthetic mixed set (default 2,000 answers, seeded): about half plain numbers in the forms
models write them (leading zeros, thousands separators, units, fractions, decimals, percent),
half symbolic (polynomials expanded against factored, radicals, pi, intervals with symbolic
ends, matrices with radicals), a third of each wrong. Every (pred, gold) pair is distinct, so
the pool's de-duplication of repeated pairs does not flatter it. Worker start-up is excluded
from the timings (the workers live across steps in training). "math-verify alone" is
`verify(parse(gold), parse(pred))` with its default configuration, in this process.

    python benchmarks/grading.py                 # 2,000 answers, 2 workers
    python benchmarks/grading.py --n 5000 --workers 8
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pillion.rewards import GradingPool, extract_answer, math_equal  # noqa: E402
from pillion.rewards.math import prepare  # noqa: E402


def numeric_pair(rng: random.Random) -> tuple[str, str]:
    value = rng.randint(1, 200_000)
    wrong = rng.random() < 1 / 3
    pred_value = value + rng.choice([-1, 1, 10]) if wrong else value
    form = rng.randrange(6)
    if form == 0:
        return f"{pred_value:,}", str(value)
    if form == 1:
        return f"\\${pred_value}", f"{value:06d}"
    if form == 2:
        return f"{pred_value}\\text{{ cm}}", str(value)
    if form == 3:
        den = rng.randint(2, 97)
        return f"\\frac{{{pred_value}}}{{{den}}}", f"{value / den:.3f}" if not wrong else f"{value}/{den}"
    if form == 4:
        return f"{pred_value / 8}", f"\\frac{{{value}}}{{8}}"
    return f"{pred_value}\\%", f"{value}"


def symbolic_pair(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 40), rng.randint(1, 40)
    wrong = rng.random() < 1 / 3
    c = b + 1 if wrong else b
    form = rng.randrange(5)
    if form == 0:
        return f"(x+{a})(x+{c})", f"x^2+{a + b}x+{a * b}"
    if form == 1:
        return f"{a}\\sqrt{{{c * c * 2}}}", f"{a * b}\\sqrt{{2}}"
    if form == 2:
        return f"\\frac{{{a}\\pi}}{{{c}}}", f"\\frac{{{2 * a}\\pi}}{{{2 * b}}}"
    if form == 3:
        return f"(-\\sqrt{{{a}}}, {c}\\sqrt{{3}}]", f"(-\\sqrt{{{a}}}, \\sqrt{{{3 * b * b}}}]"
    return (f"\\begin{{pmatrix}}\\sqrt{{{a * a}}} & {c}\\\\ 0 & 1\\end{{pmatrix}}",
            f"\\begin{{pmatrix}}{a} & {b}\\\\ 0 & 1\\end{{pmatrix}}")


def make_set(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < n:
        pairs.add(numeric_pair(rng) if rng.random() < 0.5 else symbolic_pair(rng))
    ordered = sorted(pairs)
    rng.shuffle(ordered)
    return [p for p, _ in ordered], [g for _, g in ordered]


PATHOLOGICAL = [
    "10^{10^{10^{10}}}",           # a power tower: MemoryError under the worker's RLIMIT_AS
    "9999!",
    "\\frac{(9999!)!}{3}",          # never finishes: the deadline kills the worker
    "\\sqrt{" * 150 + "2" + "}" * 150,
    "1+" * 50_000 + "1",           # 100 kB: never parsed
]
DEGENERATE = {
    "unclosed \\boxed{ x20k": "\\boxed{" * 20_000 + "1",
    "<answer> x20k": "<answer>" * 20_000 + "2",
    "answer: x20k": "answer: " * 20_000,
    "$ x100k": "$" * 100_001,
    "digits 100 kB": "1 " * 50_000,
    "one expression 100 kB": "1+" * 50_000 + "1",
    "prose 100 kB": "so " * 33_000 + "7",
}


def math_verify_alone(preds, golds) -> list[bool]:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    return [bool(verify(parse(f"${g}$"), parse(f"${p}$"))) for p, g in zip(preds, golds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    preds, golds = make_set(args.n, args.seed)
    symbolic = sum(prepare(p, g)[0] is None for p, g in zip(preds, golds))

    math_verify_alone(["x+1"], ["1+x"])  # its imports, outside the timing
    start = time.perf_counter()
    reference = math_verify_alone(preds, golds)
    reference_s = time.perf_counter() - start

    math_equal("x+1", "1+x", timeout=args.timeout)  # boot the serial worker outside the timing
    start = time.perf_counter()
    serial = [math_equal(p, g, timeout=args.timeout) for p, g in zip(preds, golds)]
    serial_s = time.perf_counter() - start

    with GradingPool(workers=args.workers, timeout=args.timeout) as pool:
        pool.grade(["x+1"] * args.workers, ["1+x"] * args.workers)  # boot the workers
        start = time.perf_counter()
        pooled = pool.grade(preds, golds)
        pool_s = time.perf_counter() - start
        timeouts = pool.timeouts

    assert serial == pooled, "the pool must agree with serial grading"
    print(f"answers: {args.n} ({symbolic} symbolic, {args.n - symbolic} decided in-process), "
          f"{sum(serial)} equal, pool timeouts: {timeouts}, cpu cores: {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes on the machine skew all figures)")
    print(f"verdicts differing from math-verify's: {sum(a != b for a, b in zip(serial, reference))}")
    print(f"math-verify alone (serial):   {args.n / reference_s:9.1f} answers/s ({reference_s:.2f} s)")
    print(f"serial math_equal:            {args.n / serial_s:9.1f} answers/s ({serial_s:.2f} s)")
    print(f"GradingPool({args.workers} workers):       {args.n / pool_s:9.1f} answers/s ({pool_s:.2f} s)")
    print(f"ratio pool / math-verify:     {reference_s / pool_s:9.2f}x")
    print(f"ratio serial / math-verify:   {reference_s / serial_s:9.2f}x")
    print(f"ratio pool / serial:          {serial_s / pool_s:9.2f}x")

    # The grader's bound: no call slower than its timeout + 1 s (the default pool is warm).
    timeout = 1.0
    slowest = 0.0
    for pred in PATHOLOGICAL:
        start = time.perf_counter()
        assert math_equal(pred, "5", timeout=timeout) is False
        slowest = max(slowest, time.perf_counter() - start)
    print(f"slowest pathological call:    {slowest:9.2f} s against a timeout of {timeout:.1f} s "
          f"({'within' if slowest <= timeout + 1 else 'OVER'} timeout + 1 s)")

    for name, text in DEGENERATE.items():
        start = time.perf_counter()
        extract_answer(text)
        print(f"extract_answer({name}): {1000 * (time.perf_counter() - start):8.1f} ms")


if __name__ == "__main__":
    main()
