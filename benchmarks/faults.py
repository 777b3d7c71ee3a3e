"""Fault test: SIGKILL `pillion train` at random moments, resume each time, compare with a clean run.

    python benchmarks/faults.py                 # 20 kills, ~5-8 minutes on 2 CPU cores
    python benchmarks/faults.py --kills 5 --steps 12

A reference run goes straight through. The same run is then started, killed with SIGKILL (the
whole process group: trainer and grading workers) and resumed with `--resume`, `--kills` times:
half of the kills land at a random moment after start, half inside a checkpoint write (the
script polls the checkpoints folder for a `step-*.tmp` folder and kills a random few
milliseconds after it appears). A kill before the run folder holds its config.yaml is followed
by a fresh start, as a user would do. Finally the run is resumed to the end, and its
metrics.jsonl and report.json are compared with the reference on every field that is not a
wall-clock time. Prints kills survived / kills tried and whether the metrics matched; exits 1
otherwise. Not part of CI (it takes minutes and is timing-driven by design).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pillion.train.update import TIMING_FIELDS

TIMING = TIMING_FIELDS


def config(steps: int) -> list[str]:
    return [f"steps={steps}", "save_every=3", "prompts_per_step=4", "group_size=4", "max_new_tokens=24",
            "micro_batch=16", "data.heldout_size=8", "eval.k=1", "eval.max_new_tokens=24", "data.synthetic_size=400",
            "reward.answer_style=auto"]  # auto: some answers go through the symbolic grading worker


def start(out: Path, args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pillion", "train", f"out={out}", *args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def comparable(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report = json.loads((run_dir / "report.json").read_text())
    report.pop("run_dir", None)
    return rows, report


def wait_for_checkpoint_write(out: Path, proc: subprocess.Popen, deadline: float) -> bool:
    """Poll for a step-*.tmp folder (a checkpoint being written); False if the run ends first."""
    folder = out / "checkpoints"
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and any(p.name.endswith(".tmp") for p in folder.iterdir()):
            return True
        time.sleep(0.002)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed at the end)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="pillion-faults-"))
    log = open(root / "log.txt", "w")
    cfg = config(args.steps)

    t0 = time.monotonic()
    reference = root / "reference"
    if start(reference, cfg, log).wait() != 0:
        print(f"the reference run failed; see {root / 'log.txt'}")
        return 1
    clean_seconds = time.monotonic() - t0
    print(f"reference run: {clean_seconds:.1f} s")

    out = root / "killed"
    tried = 0
    inside = 0
    while tried < args.kills:
        resume = (out / "config.yaml").is_file()
        proc = start(out, ["--resume"] if resume else cfg, log)
        inside_write = tried % 2 == 1
        if inside_write:
            hit = wait_for_checkpoint_write(out, proc, time.monotonic() + clean_seconds)
            time.sleep(rng.uniform(0.0, 0.03))  # land at different points of the write
        else:
            time.sleep(rng.uniform(0.5, max(1.0, clean_seconds * 0.6)))
            hit = False
        if proc.poll() is not None:  # ended before the kill landed
            if proc.returncode != 0:  # the previous kill left a folder that does not resume
                print(f"kills survived / kills tried: {tried - 1}/{tried}: a resume failed with exit code "
                      f"{proc.returncode}; see {root / 'log.txt'}")
                return 1
            shutil.rmtree(out)  # it finished: start the whole run again to place more kills
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        tried += 1
        inside += hit
        done = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
        print(f"kill {tried}: {'inside a checkpoint write' if hit else 'at a random moment'}; checkpoints "
              f"folder: {done}", flush=True)

    final = start(out, ["--resume"] if (out / "config.yaml").is_file() else cfg, log).wait()
    survived = tried if final == 0 else tried - 1
    matched = final == 0 and comparable(out) == comparable(reference)
    print(f"kills survived / kills tried: {survived}/{tried} ({inside} inside checkpoint writes, "
          f"{tried - inside} at random moments)")
    print(f"metrics.jsonl and report.json equal to the uninterrupted run on every non-timing field: {matched}")
    print(f"total {time.monotonic() - t0:.0f} s")
    if args.keep:
        print(f"run folders: {root}")
    else:
        log.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
