"""A whole RL run's peak memory (RSS), pillion beside TRL's GRPOTrainer, on CPU.

    python benchmarks/memory_cpu.py --trl-python PATH/TO/venv-trl/bin/python   # or $PILLION_TRL_PYTHON
    python benchmarks/memory_cpu.py --trace       # + pillion's RSS over the run, at named marks
    python benchmarks/memory_cpu.py --smoke       # CI: the tiny model, 1 step, pillion only, traced

The workload is step_cpu.py's "24m": a random 24M-parameter Qwen2 checkpoint (one folder, read
by both sides), 3 steps of GRPO, 4 prompts x 4 samples x 64 new tokens, EOS ignored (every row
runs to 64 tokens), no KL term on either side (so no reference model), learning rate 1e-5,
float32, synthetic arithmetic (levels 1-2, the "qa" template, graded by pillion.rewards.score).
Each side runs alone in its own process, one after the other:

  pillion  `pillion train` through its command line (`pillion.cli.main`), as a user runs it:
           setup (model, optimizer, engine, the default 20000 synthetic problems, a grading
           worker), the held-out evaluation before RL (the defaults: 200 problems x 4 samples,
           48 new tokens, 64 prompts per engine call), 3 steps, the checkpoint after the last
           one, the evaluation after RL, report.json and report.md with its plots. Only change
           to the command: the engine's EOS ids are emptied once it is built, so that rollouts
           and evaluations run every row to its length (the default KL-to-initial probe,
           behaviour.kl_probe_every=10, runs at step 1 as in any run);
  TRL      `GRPOTrainer.train` for 3 steps on the same problems (step_cpu.trl_trainer:
           min_new_tokens = 64, beta 0, no evaluation, no saves), in float32 without
           gradient checkpointing as pillion runs (`--trl-defaults`: GRPOConfig's own bf16,
           autocast on the CPU, and gradient checkpointing; not like for like).

Both sides run torch's default intra-op threads (one per core), or `--threads N`: the
allocations of each thread's malloc arena change the figures (pillion's own default, threads=auto,
would take fewer when other work keeps cores busy, so it is set to the same count).

Printed per side: the peak RSS of the process (os.wait4's ru_maxrss, what `/usr/bin/time`
reports; it is the larger of the process's own and its children's), its children's largest
peak separately (pillion: the symbolic grading worker; a separate process, so it is not in the
main one's figure), the wall time, and the ratio pillion / TRL; the load average before each.

`--trace` samples pillion's RSS every 50 ms from a thread (/proc/self/statm) and marks the
run's phases by wrapping the loop's functions (pillion/train/rl.py) in the child: imports done,
models built, engine built, setup done, each evaluation, each step's generation, KL probe and
update, the checkpoint, the report. It prints the RSS at each mark, the highest sample since the
previous mark, the process's peak so far (ru_maxrss, exact), and the phase where the peak was
reached. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import step_cpu  # benchmarks/step_cpu.py (the script's folder is on sys.path)
from trl_env import trl_python

MB = 1 << 20


class Trace:
    """This process's RSS sampled every `every` seconds from a thread, its children's (summed)
    every tenth sample, and named marks."""

    def __init__(self, every: float = 0.05):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = time.perf_counter()
        self.samples: list[tuple[float, int]] = []  # (seconds, RSS bytes)
        self.children = 0  # the highest sum of the children's RSS sampled
        self.marks: list[dict] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self.thread.start()

    def rss(self, pid: int | str = "self") -> int:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * self.page  # resident pages

    def children_rss(self) -> int:
        """The RSS of this process's children, summed (found by their parent pid in /proc/*/stat)."""
        me, total = os.getpid(), 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:  # field 4, after the command's name
                        total += self.rss(pid)
            except (OSError, IndexError, ValueError):  # it ended meanwhile
                pass
        return total

    def _sample(self, every: float) -> None:
        n = 0
        while not self.done.wait(every):
            self.samples.append((time.perf_counter() - self.start, self.rss()))
            if n % 10 == 0:
                self.children = max(self.children, self.children_rss())
            n += 1

    def mark(self, name: str) -> None:
        now = time.perf_counter() - self.start
        self.samples.append((now, rss := self.rss()))
        self.marks.append({"name": name, "t": now, "rss": rss, "peak": high_water(), "heap_free": heap_free()})

    def table(self) -> list[dict]:
        """The marks, each with `phase_max`: the highest sample since the previous mark."""
        self.done.set()
        rows, last = [], 0.0
        for m in self.marks:
            inside = [r for t, r in self.samples if last < t <= m["t"]]
            rows.append({**m, "phase_max": max(inside, default=m["rss"])})
            last = m["t"]
        return rows


def heap_free() -> int:
    """Bytes that malloc holds free in its arenas (glibc's mallinfo2 `fordblks`; 0 elsewhere): freed
    memory the process keeps, so counted in its RSS once touched."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:  # not glibc >= 2.33
        return 0
    mallinfo2.restype = MallInfo2
    return mallinfo2().fordblks


def high_water() -> int:
    """This process's peak RSS since its exec (VmHWM). Its ru_maxrss is the larger of that and
    the peak of the process that launched it: Linux carries the old address space's peak over exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024  # kB


def traced(trace: Trace, rl) -> None:
    """Wrap the loop's functions in `rl` (pillion.train.rl) so that each marks `trace` when it returns."""
    steps = {"generate": 0, "update": 0}

    def wrap(name: str, label):
        real = getattr(rl, name)

        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            trace.mark(label(*args) if callable(label) else label)
            return out

        setattr(rl, name, call)

    def counted(kind: str):
        def label(*args):
            steps[kind] += 1
            return f"step {steps[kind]} {kind}"

        return label

    real_build_data = rl.build_data

    def build_data(*args, **kwargs):
        trace.mark("engine built")  # setup builds the engine just before the data
        return real_build_data(*args, **kwargs)

    rl.build_data = build_data
    wrap("build_models", "models built")
    wrap("setup", "setup done (data, grader, run folder)")
    wrap("evaluate_heldout", lambda run, cfg, tag: f"eval {tag}")
    wrap("generate", counted("generate"))
    wrap("kl_probe", lambda *a: f"step {steps['generate']} kl probe")
    wrap("update", counted("update"))
    wrap("save_checkpoint", "checkpoint")
    wrap("_write_report", "report")


def pillion_child(args, trace: Trace) -> None:
    if args.trace:
        trace.mark("start")
    from pillion import cli
    from pillion.train import rl

    if args.trace:
        trace.mark("imports")
        traced(trace, rl)
    real_setup = rl.setup

    def setup(*a, **k):
        run = real_setup(*a, **k)
        run.engine.eos_ids = []  # every row runs to its length, as TRL's min_new_tokens
        return run

    rl.setup = setup
    _, prompts, samples, new, _ = step_cpu.workload(args.workload)
    import torch

    # threads as TRL's side runs them (pillion's threads=auto would count the cores busy elsewhere)
    keys = [f"threads={args.threads or torch.get_num_threads()}", f"model={args.model_dir}", f"out={args.out}",
            f"steps={args.steps}", f"prompts_per_step={prompts}",
            f"group_size={samples}", f"max_new_tokens={new}", "loss.kl_coef=0", f"lr={step_cpu.LR}",
            f"data.template={step_cpu.TEMPLATE}", *args.extra]
    code = cli.main(["train", *keys, "--overwrite"])
    if code:
        raise SystemExit(code)
    if args.trace:
        trace.mark("end")


def trl_child(args, trace: Trace) -> None:
    step_cpu.set_threads(args)
    with tempfile.TemporaryDirectory() as out_dir:
        step_cpu.trl_trainer(argparse.Namespace(workloads=args.workload, model_dir=str(args.model_dir), kl=0.0,
                                                trl_defaults=args.trl_defaults), args.steps, out_dir, []).train()


def run_child(python: str, side: str, args, log: Path) -> dict | None:
    """Runs one side (or the model's creation) in its own process; returns what it reported, with
    its ru_maxrss from os.wait4, its wall time and the load average when it started."""
    cmd = [python, str(Path(__file__).resolve()), "--child", side, "--model-dir", str(args.model_dir),
           "--workload", args.workload, "--steps", str(args.steps), "--threads", str(args.threads),
           "--out", str(args.work_dir / f"run-{side}"),
           *(["--trace"] if args.trace else []), *(["--trl-defaults"] if args.trl_defaults else []),
           *sum([["--extra", e] for e in args.extra], [])]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=step_cpu.child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall = time.perf_counter() - start
    lines = [line for line in log.read_text().splitlines() if line.startswith("MEMORY ")]
    if proc.returncode or not lines:
        print(f"  {side}: exited with status {proc.returncode}; its output: {log}")
        return None
    return {**json.loads(lines[-1][7:]), "wait4": usage.ru_maxrss * 1024, "wall": wall, "load": load}


def print_trace(rows: list[dict]) -> None:
    final = rows[-1]["peak"]
    where = next(r["name"] for r in rows if r["peak"] >= final)
    print("  pillion's RSS at each mark (MB; max: the highest 50 ms sample since the previous mark; "
          "peak: VmHWM so far; free: held free by malloc)")
    print(f"    {'mark':40s} {'s':>6s} {'RSS':>6s} {'max':>6s} {'peak':>6s} {'free':>6s}")
    for r in rows:
        sizes = " ".join(f"{r[k] / MB:6.0f}" for k in ("rss", "phase_max", "peak", "heap_free"))
        print(f"    {r['name']:40s} {r['t']:6.1f} {sizes}")
    print(f"  peak {final / MB:.0f} MB, reached in the phase ending at '{where}'")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl-python", help="python of an environment with trl (or $PILLION_TRL_PYTHON)")
    p.add_argument("--trace", action="store_true", help="pillion's RSS at each phase of the run")
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 step, small evaluation, pillion only, traced")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on both sides (0: torch's default)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pillion-memory-cpu")
    p.add_argument("--extra", action="append", default=[], help="a pillion key=value override (repeatable)")
    step_cpu.add_trl_defaults(p)
    p.add_argument("--workload", default="24m", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["pillion", "trl", "model"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "model":
        step_cpu.make_model(args.workload, args.model_dir)
        print("MEMORY {}")
        return 0
    if args.child:
        trace = Trace()
        (pillion_child if args.child == "pillion" else trl_child)(args, trace)
        print("MEMORY " + json.dumps({"hwm": high_water(), "children": trace.children,
                                      "trace": trace.table() if args.trace else None}), flush=True)
        return 0
    if args.smoke:
        args.workload, args.steps, args.trace, args.trl_python = "tiny", 1, True, None
        args.extra = ["data.heldout_size=8", "data.synthetic_size=200", *args.extra]
    trl = None if args.smoke else trl_python(args)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    # Made in a process of its own: this one stays small, so that the children's ru_maxrss,
    # which starts at their launcher's peak (high_water), is their own.
    args.model_dir = args.work_dir / f"model-{args.workload}"
    if run_child(sys.executable, "model", args, args.work_dir / "model.log") is None:
        return 1
    _, prompts, samples, new, _ = step_cpu.workload(args.workload)
    print(f"whole run: {args.steps} steps of {prompts} prompts x {samples} samples x {new} tokens (EOS ignored), "
          f"no KL; threads: {args.threads or 'torch default'} on both sides; model {args.model_dir}")
    print("TRL: " + ("GRPOConfig's defaults (bf16 autocast, gradient checkpointing)" if args.trl_defaults else
                     "float32, no gradient checkpointing, as pillion"))
    if not trl and not args.smoke:
        print("TRL: skipped (pass --trl-python or set PILLION_TRL_PYTHON to a python that imports trl, datasets)")
    results = {}
    for side, python in [("pillion", sys.executable), *([("TRL", trl)] if trl else [])]:
        results[side] = got = run_child(python, side.lower(), args, args.work_dir / f"{side.lower()}.log")
        if got is None:
            return 1
        print(f"  {side:8s} peak RSS {got['wait4'] / MB:5.0f} MB (VmHWM {got['hwm'] / MB:.0f} MB; its child processes "
              f"{got['children'] / MB:.0f} MB more at most), {got['wall']:.0f} s wall, load average {got['load']:.1f}",
              flush=True)
        if got.get("trace"):
            print_trace(got["trace"])
    if "TRL" in results:
        print(f"  pillion / TRL peak RSS: {results['pillion']['wait4'] / results['TRL']['wait4']:.2f}x")
    (args.work_dir / "memory_cpu.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
