"""Wall time at 1 and 2 intra-op threads (and `threads=auto`) beside 0, 1 and 2 busy processes.

Two workloads, each run as a fresh `python -m pillion train` process per cell:

  readme  the README's main job (`pillion train`: 60 GRPO steps and 200 held-out problems
          before and after); the cell is the whole job's wall time
  24m     a random 24M-parameter Qwen2 (hidden 512, 8 layers), 4 prompts x 4 samples x 64
          tokens, EOS ignored, 4 steps; the cell is the median step time of steps 2-4

"busy" processes are `python -c "while True: pass"` started before the run and killed after it:
each keeps one core busy, like a compile or a browser tab would. Every row prints the load
average and the cores the busy loops and the run left idle, measured over the run from
/proc/stat, so a cell taken beside other work shows it.

    python benchmarks/threads_cpu.py                          # both workloads, busy 0 1 2, threads 1 2 auto
    python benchmarks/threads_cpu.py --workloads readme --busy 1 --threads 1 2
    python benchmarks/threads_cpu.py --readme-steps 20        # a shorter job (wall times scale down)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY_LOOP = "while True: pass"


def idle_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def make_24m(folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from pillion.model.tiny import make_tiny_checkpoint

    return str(make_tiny_checkpoint(folder / "24m", "qwen2", hidden_size=512, num_layers=8, num_heads=8,
                                    num_kv_heads=2, intermediate_size=1536, seed=0))


def job(workload: str, out: Path, threads: str, args, model_24m: str | None) -> list[str]:
    command = [sys.executable, "-m", "pillion", "train", f"out={out}", f"threads={threads}"]
    if workload == "readme":
        return command + ([f"steps={args.readme_steps}"] if args.readme_steps else [])
    # EOS ignored: the model's eos id set past the vocabulary is not possible from the command
    # line, so the budget is filled with temperature 1 on a random model (it rarely emits EOS).
    return command + [f"model={model_24m}", "steps=4", "prompts_per_step=4", "group_size=4",
                      "max_new_tokens=64", "data.heldout_size=4", "eval.k=1", "eval.max_new_tokens=8",
                      "save_every=100"]


def run_cell(workload: str, threads: str, busy: int, args, model_24m: str | None) -> dict:
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        time.sleep(1.0)  # the loops are running before the run measures its cores
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
            idle0, total0 = idle_ticks()
            start = time.perf_counter()
            proc = subprocess.run(job(workload, out, threads, args, model_24m), cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            idle1, total1 = idle_ticks()
            if proc.returncode != 0:
                raise SystemExit(f"{workload} threads={threads} busy={busy} failed:\n{proc.stderr[-2000:]}")
            chosen = next((line for line in proc.stdout.splitlines() if line.startswith("threads:")), "?")
            report = json.loads((out / "report.json").read_text())
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            steps = [r["step_time"] for r in rows if "step_time" in r]
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    cores = os.cpu_count() or 1
    return {"wall": wall, "step": statistics.median(steps[1:]) if len(steps) > 1 else float("nan"),
            "pass1": (report.get("pass1_before"), report.get("pass1_after")), "load": load, "chosen": chosen,
            "idle_cores": cores * (idle1 - idle0) / max(1, total1 - total0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=["readme", "24m"], choices=["readme", "24m"])
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"])
    parser.add_argument("--readme-steps", type=int, default=0, help="steps of the README job (0: its 60)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_24m = make_24m(Path(tmp)) if "24m" in args.workloads else None
        for workload in args.workloads:
            measure = "job wall s" if workload == "readme" else "median step s"
            print(f"\n{workload}: {measure} (pass@1 before -> after)")
            print("| busy | threads | chosen | wall s | step s | pass@1 | load | idle cores during run |")
            print("|---:|---|---|---:|---:|---|---:|---:|")
            for busy in args.busy:
                for threads in args.threads:
                    cell = run_cell(workload, threads, busy, args, model_24m)
                    before, after = cell["pass1"]
                    print(f"| {busy} | {threads} | {cell['chosen'].removeprefix('threads: ')} | {cell['wall']:.1f} "
                          f"| {cell['step']:.3f} | {before:.3f} -> {after:.3f} | {cell['load']:.2f} "
                          f"| {cell['idle_cores']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
