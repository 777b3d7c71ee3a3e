"""HumanEval's 164 reference solutions through pillion's code sandbox: all must pass, and a
wrong answer to each must fail.

    python benchmarks/humaneval_sandbox.py [PATH] [--threads N]   (PYTHONPATH=. or after pip install -e .)

PATH is openai/human-eval's HumanEval.jsonl (default: ./HumanEval.jsonl); without that file the
script says so and exits 0. Each problem is graded three ways with
`pillion.rewards.code.code_reward` and the problem's prompt as prefix:
  completion style    the canonical solution as a completion continuing the prompt
  whole function      the reference as one ```python block (prompt + canonical solution)
  wrong               the body `return None` (no HumanEval function passes with it)
and the script prints the pass count of each (target: 164, 164, 0) and the seconds taken,
side by side in one run. Grading runs in N threads, each waiting on one sandbox process.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from pillion.data import read
from pillion.rewards import code as code_module
from pillion.rewards.code import SandboxLimits, code_reward

WRONG = "    return None\n"


def grade_all(problems, texts, limits, threads):
    """(passed ids, seconds): every problem graded with its text, in `threads` threads."""
    code_module._RESULTS.clear()  # time the sandbox, not the memo of results
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        scores = list(pool.map(lambda i: code_reward(texts[i], problems[i].tests, limits,
                                                     prefix=problems[i].meta["code_prefix"], mode="all_pass"),
                               range(len(problems))))
    return [p.id for p, s in zip(problems, scores) if s == 1.0], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="HumanEval.jsonl")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--wall-s", type=float, default=10.0, help="wall-clock limit per sandbox run")
    args = parser.parse_args()
    if not os.path.exists(args.path):
        print(f"skipped: {args.path} not found (HumanEval.jsonl from openai/human-eval)")
        return 0
    problems = read(args.path)
    limits = SandboxLimits(wall_s=args.wall_s, cpu_s=int(args.wall_s))
    runs = {
        "completion style": [p.meta["canonical_solution"] for p in problems],
        "whole function": [p.solution for p in problems],
        "wrong (return None)": [WRONG for _ in problems],
    }
    print(f"{len(problems)} problems from {args.path}, {args.threads} threads")
    failures = 0
    for name, texts in runs.items():
        passed, seconds = grade_all(problems, texts, limits, args.threads)
        target = 0 if name.startswith("wrong") else len(problems)
        failures += len(passed) != target
        print(f"  {name:20s} {len(passed):4d} / {len(problems)} pass (target {target})  {seconds:6.1f} s  "
              f"{1000 * seconds / len(problems):5.1f} ms per problem")
        odd = [pid for pid in ([p.id for p in problems if p.id not in passed] if target else passed)]
        if odd:
            print(f"    off target: {', '.join(odd[:10])}{' ...' if len(odd) > 10 else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
