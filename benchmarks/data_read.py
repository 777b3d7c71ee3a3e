"""How fast `pillion.data.read` turns GSM8K-shaped jsonl into Problems.

Writes 100,000 GSM8K-shaped rows to a temporary directory, reads them back with
format="auto" (detection included) and prints rows per second. Target: under 5 s.

    python benchmarks/data_read.py [--rows 100000] [--repeats 3]   (after `pip install -e .`,
                                                                   or with PYTHONPATH=.)
"""

import argparse
import json
import os
import random
import tempfile
import time

from pillion.data import read


def gsm8k_row(i: int, rng: random.Random) -> dict:
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    return {
        "question": f"Problem {i}: Janet's ducks lay {a} eggs per day. She eats {b % a} and sells "
                    f"the rest for ${c} each. How many dollars does she make every day?",
        "answer": f"She sells {a} - {b % a} = <<{a}-{b % a}={a - b % a}>>{a - b % a} eggs.\n"
                  f"She makes {a - b % a} * {c} = $<<{a - b % a}*{c}={(a - b % a) * c}>>"
                  f"{(a - b % a) * c}.\n#### {(a - b % a) * c}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gsm8k_like.jsonl")
        with open(path, "w") as f:
            for i in range(args.rows):
                f.write(json.dumps(gsm8k_row(i, rng)) + "\n")
        size_mb = os.path.getsize(path) / 1e6
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            problems = read(path)
            times.append(time.perf_counter() - start)
        assert len(problems) == args.rows and problems[0].source == "gsm8k"
    best = min(times)
    print(f"read {args.rows:,} GSM8K-shaped rows ({size_mb:.1f} MB jsonl): best {best:.2f} s of "
          f"{args.repeats} ({args.rows / best:,.0f} rows/s); target < 5 s: "
          f"{'ok' if best < 5 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
