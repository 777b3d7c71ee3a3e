"""Agreement with the label: pillion's grader and math-verify side by side, on two sets.

1. The hand-written cases of tests/rewards/grader_cases.py, per category.
2. Generated rewrites of real gold answers (tests/rewards/rewrites.py): every MATH-500 gold
   and a seeded sample of 300 GSM8K golds from ../shared/data when it is there, else the ~100
   golds shipped in tests/rewards/golds.jsonl; EQUAL rewrites and NOT EQUAL near misses, each
   in three styles (bare, in a \\boxed{} solution, in a "Therefore, the answer is $...$."
   sentence). Tables per style and per kind; false positives (a NOT EQUAL rewrite graded
   equal) counted apart.

pillion: extraction in the fallback style (the default of `pillion eval`) and `math_equal`,
with the question; math-verify: `verify(parse(gold), parse(completion))` as its README uses
it. tests/rewards/test_grader_parity.py and test_grader_rewrites.py assert pillion >=
math-verify in every row.

    python benchmarks/grader_parity.py                 # both sets (~1 min on 2 cores)
    python benchmarks/grader_parity.py --generated     # the generated set only
    python benchmarks/grader_parity.py --shipped       # the generated set on the shipped golds only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.rewards import rewrites  # noqa: E402
from tests.rewards.grader_cases import agreement, rows  # noqa: E402


def hand_written() -> None:
    table = agreement()
    print(f"| {'category':12s} | cases | not equal | pillion | math-verify |")
    print("|---|---:|---:|---:|---:|")
    totals = [0, 0, 0, 0]
    for category, (n, ours, theirs) in table.items():
        negatives = sum(not equal for _, _, equal, _ in rows(category))
        print(f"| {category:12s} | {n} | {negatives} | {ours}/{n} ({100 * ours / n:.0f}%) "
              f"| {theirs}/{n} ({100 * theirs / n:.0f}%) |")
        totals = [t + v for t, v in zip(totals, (n, negatives, ours, theirs))]
    n, negatives, ours, theirs = totals
    print(f"| {'all':12s} | {n} | {negatives} | {ours}/{n} ({100 * ours / n:.1f}%) "
          f"| {theirs}/{n} ({100 * theirs / n:.1f}%) |")


def _cell(row: dict, grader: str) -> str:
    agree, false_positives = row[grader]
    return f"{agree}/{row['n']} ({100 * agree / row['n']:.1f}%) | {false_positives}"


def generated(shipped_only: bool) -> None:
    from pillion.rewards import GradingPool

    golds = None if shipped_only else rewrites.shared_golds()
    where = "../shared/data: all MATH-500 golds, 300 GSM8K golds"
    if golds is None:
        golds, where = rewrites.shipped_golds(), "tests/rewards/golds.jsonl (shipped sample)"
    start = time.perf_counter()
    cases = rewrites.items(golds)
    made_s = time.perf_counter() - start
    with GradingPool(workers=2, timeout=30.0) as pool:
        start = time.perf_counter()
        ours = rewrites.pillion_verdicts(cases, pool)
        ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = rewrites.math_verify_verdicts(cases)
    theirs_s = time.perf_counter() - start
    verdicts = {"pillion": ours, "math-verify": theirs}
    negatives = sum(not c.rewrite.equal for c in cases)
    print(f"\nGenerated rewrites: {len(golds)} golds from {where}; {len(cases)} completions "
          f"({len(cases) // 3} rewrites x 3 styles, {negatives} NOT EQUAL); made in {made_s:.0f} s, "
          f"graded by pillion in {ours_s:.0f} s, by math-verify in {theirs_s:.0f} s")
    for by in ("style", "kind"):
        table = rewrites.agreement_table(cases, verdicts, by)
        print(f"\n| {by} | completions | not equal | pillion agrees | pillion false pos. "
              f"| math-verify agrees | math-verify false pos. |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for group, row in table.items():
            print(f"| {group} | {row['n']} | {row['not_equal']} | {_cell(row, 'pillion')} "
                  f"| {_cell(row, 'math-verify')} |")
        if by == "style":
            total = {"n": len(cases), "not_equal": negatives,
                     **{g: [sum(r[g][0] for r in table.values()), sum(r[g][1] for r in table.values())]
                        for g in verdicts}}
            print(f"| all | {total['n']} | {negatives} | {_cell(total, 'pillion')} | {_cell(total, 'math-verify')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", action="store_true", help="the generated set only")
    parser.add_argument("--shipped", action="store_true", help="the generated set on the shipped golds only")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # math-verify warns on every failed parse
    if not (args.generated or args.shipped):
        hand_written()
    generated(args.shipped)


if __name__ == "__main__":
    main()
