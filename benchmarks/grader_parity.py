"""Agreement with the label per category: pillion's grader and math-verify side by side.

Runs both graders on the hand-written cases of tests/rewards/grader_cases.py (issue 11's
categories plus the two that must stay NOT equal) and prints, per category, how many
verdicts of each agree with the label. pillion: extraction in the fallback style (the
default of `pillion eval`) and `math_equal`; math-verify: `verify(parse(gold), parse(text))`
as its README uses it. tests/rewards/test_grader_parity.py asserts pillion >= math-verify in
every row.

    python benchmarks/grader_parity.py
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.rewards.grader_cases import agreement, rows  # noqa: E402


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify warns on every failed parse
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


if __name__ == "__main__":
    main()
