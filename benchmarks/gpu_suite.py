"""Every GPU check in one call: one table on stdout and one JSON file, sized for one H100 in 8 minutes.

    python benchmarks/gpu_suite.py                              # on a CUDA machine; without CUDA: one line, exit 0
    python benchmarks/gpu_suite.py --trl-python PATH/TO/python  # + TRL's RL step, run last
    python benchmarks/gpu_suite.py --smoke                      # all of it on CPU at tiny sizes (a test runs this)

Each check is another benchmark (or pillion command) run as a child process with a time limit of
its own, in this order, so that a check that fails or overruns costs only its own line:

  model       a random Qwen2.5-1.5B-shaped folder in bf16 (step_gpu.py's), made once in --work
  logprob     `pillion logprob-check` in bf16 on that folder: engine vs trainer vs transformers
              (docs/algorithms.md's multiplicative token probability error; target <= 1.02)
  rollout     rollout_gpu.py: pillion's engine (compiled decode step in one CUDA graph) against
              transformers' plain `generate`, 64 prompts x 512 sampled tokens, tokens/s
  step        step_gpu.py: the RL step on that folder (64 prompts x 8 samples x 512 tokens, compiled),
              one warm-up step and one counted; time by phase, update tokens/s, MFU (target >= 50%)
  memory      update_memory.py --device cuda: one update's peak memory at the Qwen2.5-0.5B shape,
              full fine-tuning, LoRA, and full with activation checkpointing
  learn       the default job (`pillion train`, the shipped model and data) on the GPU: held-out
              pass@1 before and after, wall time (about 90 s)
  trl         with --trl-python: TRL's GRPOTrainer on the step's folder and workload (minutes)

Every child writes its measures as JSON; this script gathers them into --json (default
gpu_suite.json in --work) and prints one table. The time limits add up to less than 8 minutes
without TRL; a check past its limit is stopped (its whole process group) and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# seconds each check may take on one H100 (compilation included); the sum stays under 8 minutes
LIMITS = {"model": 30, "logprob": 50, "rollout": 90, "step": 140, "memory": 70, "learn": 100, "trl": 600}


def commands(args, work: Path) -> dict[str, list[str]]:
    """name -> the child's command; every child writes its JSON to work/NAME.json."""
    py, smoke = sys.executable, args.smoke
    model = work / "model"
    out = {name: work / f"{name}.json" for name in LIMITS}
    make = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import step_gpu; "
            f"step_gpu.make_model(__import__('pathlib').Path({str(model)!r}), "
            f"step_gpu.{'SMOKE' if smoke else 'QWEN25_15B'})")
    device = ["--device", "cpu", "--dtype", "float32"] if smoke else ["--device", "cuda", "--dtype", "bfloat16"]
    shape = ["--smoke"] if smoke else []
    learn = ["device=cpu", "steps=2", "prompts_per_step=2", "group_size=2", "max_new_tokens=8",
             "data.heldout_size=2", "eval.max_new_tokens=8"] if smoke else ["device=cuda"]
    return {
        "model": [py, "-c", make],
        "logprob": [py, "-m", "pillion", "logprob-check", "--model", str(model), *device, "--threshold", "1.02",
                    *(["--n", "2", "--max-new-tokens", "8"] if smoke else ["--n", "8", "--max-new-tokens", "128"]),
                    "--json"],
        "rollout": [py, str(BENCH / "rollout_gpu.py"), *shape, "--json", str(out["rollout"]),
                    *([] if smoke else ["--engines", "pillion cuda-graphs,transformers dynamic"])],
        "step": [py, str(BENCH / "step_gpu.py"), *shape, "--model-dir", str(model), "--steps", "2",
                 "--only", "pillion", "--json", str(out["step"])],
        "memory": [py, str(BENCH / "update_memory.py"), *shape, "--device", "cpu" if smoke else "cuda",
                   "--settings", "lora+ckpt" if smoke else "full,lora,full+ckpt", "--json", str(out["memory"])],
        "learn": [py, "-m", "pillion", "train", f"out={work / 'learn'}", "--overwrite", *learn],
        "trl": [py, str(BENCH / "step_gpu.py"), *shape, "--model-dir", str(model), "--steps", "2", "--only", "trl",
                "--trl-python", str(args.trl_python), "--json", str(out["trl"])],
    }


def run(name: str, cmd: list[str], limit: float, work: Path) -> tuple[str, float]:
    """Runs one check with its output shown as it comes; ('ok' | 'failed (exit N)' | 'timed out', seconds)."""
    print(f"== {name}: {' '.join(cmd[:2] + [c for c in cmd[2:] if not c.startswith('import ')])}", flush=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    log = (work / f"{name}.log").open("w")
    start = time.perf_counter()
    # A process group of its own: a check past its limit is stopped with every process it started.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=ROOT)
    try:
        # The output is read line by line; the deadline is checked as lines come and once more at the end.
        deadline = start + limit
        for line in proc.stdout:
            log.write(line)
            if not line.startswith(("Loading weights", "Writing model")):
                print(f"   {line}", end="", flush=True)
            if time.perf_counter() > deadline:
                raise subprocess.TimeoutExpired(cmd, limit)
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timed out", time.perf_counter() - start
    finally:
        log.close()
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return status, time.perf_counter() - start


def measures(name: str, work: Path) -> dict:
    """The measures a finished check left: its JSON file, or for logprob and learn what they write."""
    if name == "logprob":
        lines = [line for line in (work / "logprob.log").read_text().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    if name == "learn":
        path = work / "learn" / "report.json"
        return json.loads(path.read_text()) if path.exists() else {}
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summary(name: str, m: dict) -> str:
    """One line of the table from a check's measures."""
    if not m:
        return ""
    if name == "logprob":
        return (f"metric engine/trainer {m['engine_vs_trainer']['metric']:.4f}, engine/transformers "
                f"{m['engine_vs_transformers']['metric']:.4f}, trainer/transformers "
                f"{m['trainer_vs_transformers']['metric']:.4f} (target <= 1.02; {m['tokens']} tokens)")
    if name == "rollout":
        rates = m["tokens_per_s"]
        line = ", ".join(f"{e} {r:,.0f} tok/s" for e, r in rates.items())
        ours = max((r for e, r in rates.items() if e.startswith("pillion")), default=None)
        base = rates.get("transformers dynamic")
        return line + (f" ({ours / base:.1f}x)" if ours and base else "")
    if name == "step":
        memory = f", peak {m['peak_memory_gib']:.1f} GiB" if m.get("peak_memory_gib") else ""
        return (f"step {m['step_s']:.2f} s (update {m['phases_s']['update']:.2f} s, generate "
                f"{m['phases_s']['generate']:.2f} s), {m['update_tokens_per_s']:,.0f} update tok/s, "
                f"MFU {100 * m['mfu']:.1f}%{memory}")
    if name == "memory":
        cells = []
        for setting, r in m.items():
            ours = r["pillion"]
            peak = ours.get("cuda_peak", ours.get("peak"))
            cells.append(f"{setting} {peak / 2**30:.2f} GiB" if peak else f"{setting} failed")
        return ", ".join(cells)
    if name == "learn":
        return (f"pass@1 {m.get('pass1_before', float('nan')):.3f} -> {m.get('pass1_after', float('nan')):.3f} "
                f"on {m.get('n_heldout')} held-out problems, {m.get('wall_seconds', 0):.0f} s")
    if name == "trl":
        return f"TRL step {m['trl_step_s']:.2f} s" if "trl_step_s" in m else ""
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="every check on CPU at tiny sizes: checks the script")
    p.add_argument("--trl-python", help="python of an environment with trl and datasets: TRL's step, run last")
    p.add_argument("--work", type=Path, help="folder for the model, logs and runs (default: a new temporary one)")
    p.add_argument("--json", type=Path, help="where the gathered measures go (default: WORK/gpu_suite.json)")
    p.add_argument("--only", help="comma-separated checks to run (default: all); 'model' is made when missing")
    args = p.parse_args(argv)

    import torch  # only to ask for the device; no CUDA context is made here

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_suite: CUDA is not available; skipping (run on a GPU machine, or --smoke to check the script)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="pillion-gpu-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    names = [n for n in LIMITS if n != "trl" or args.trl_python]
    if args.only:
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in LIMITS]
        if unknown:
            p.error(f"unknown check(s) {unknown}; choose among {', '.join(LIMITS)}")
        names = [n for n in names if n in wanted or (n == "model" and not (work / "model" / "config.json").exists())]
    cmds = commands(args, work)
    device = "CPU (smoke: tiny sizes, measures nothing)" if args.smoke else torch.cuda.get_device_name()
    print(f"gpu_suite on {device}; work folder {work}", flush=True)
    wall = time.perf_counter()
    results = {}
    for name in names:
        if name == "model" and (work / "model" / "config.json").exists():
            results[name] = {"status": "ok (already there)", "seconds": 0.0, "measures": {}}
            continue
        status, seconds = run(name, cmds[name], LIMITS[name] * (10 if args.smoke else 1), work)
        results[name] = {"status": status, "seconds": seconds, "measures": measures(name, work)}
    total = time.perf_counter() - wall

    print(f"\ngpu_suite: {device}, {total:.0f} s in all")
    width = max(len(n) for n in results)
    for name, r in results.items():
        line = summary(name, r["measures"]) if r["status"] == "ok" else ""
        print(f"  {name:<{width}}  {r['seconds']:5.0f} s  {r['status']:<10}  {line}")
    path = args.json or work / "gpu_suite.json"
    path.write_text(json.dumps({"device": device, "seconds": total, "checks": results}, indent=1))
    print(f"measures: {path}")
    return 0 if all(r["status"].startswith("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
