"""`pillion data inspect FILE`: what a dataset file holds before a run trains on it.

Prints the detected format, counts by source and by level, how many rows lack an extractable
gold answer, other malformed rows, and a few examples. Reads with on_error="skip", so one bad
row does not hide the rest of the report.

    pillion data inspect data/gsm8k_test.jsonl
    pillion data inspect train.parquet --format math --examples 5
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import TextIO

from pillion.data.formats import FORMATS, DataError, ReadReport, read_with_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["inspect"], help="what to do with the file")
    parser.add_argument("file", help=".jsonl, .json or .parquet file (or a Hub id with `datasets`)")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                        help="dataset schema (default: detect from the fields)")
    parser.add_argument("--examples", type=int, default=3, help="how many examples to print")


def _short(text: str | None, width: int = 160) -> str:
    text = (text or "").replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 3] + "..."


def print_report(report: ReadReport, examples: int, out: TextIO) -> None:
    problems = report.problems
    missing = [s for s in report.skipped if s.missing_answer]
    broken = [s for s in report.skipped if not s.missing_answer]
    print(f"file:     {report.path}", file=out)
    print(f"format:   {report.format}", file=out)
    print(f"rows:     {report.rows} ({len(problems)} problems, {len(report.skipped)} skipped)",
          file=out)
    print(f"without gold answer: {len(missing)}" +
          (f" (rows {', '.join(str(s.row) for s in missing[:10])}"
           f"{' ...' if len(missing) > 10 else ''})" if missing else ""), file=out)
    print(f"malformed rows: {len(broken)}", file=out)
    for s in broken[:10]:
        print(f"  row {s.row}: {s.field or '-'}: {s.message}", file=out)
    kinds = Counter(p.kind for p in problems)
    if set(kinds) != {"math"}:
        print("by kind:  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())), file=out)
    print("by source:", file=out)
    for name, n in sorted(Counter(p.source for p in problems).items()):
        print(f"  {name:<20} {n}", file=out)
    print("by level:", file=out)
    levels = Counter(p.level for p in problems)
    for level in sorted(levels, key=lambda lv: (lv is None, lv or 0)):
        print(f"  {'none' if level is None else level:<20} {levels[level]}", file=out)
    for p in problems[:examples]:
        print(f"--- example {p.id} (level {p.level})", file=out)
        print(f"question: {_short(p.question)}", file=out)
        print(f"answer:   {_short(p.answer)}", file=out)
        if p.tests:
            print(f"tests:    {len(p.tests)}", file=out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        report = read_with_report(args.file, format=args.format, on_error="skip")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_report(report, args.examples, out)
    return 0
