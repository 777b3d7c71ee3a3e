"""GRPO, DAPO and GRPO with LoRA runs at N=1 and at N=2 ranks on CPU (gloo), the same global
batch: step time, peak memory and the parameter + optimizer bytes each rank holds.

    python benchmarks/scale_cpu.py                          # the shipped tiny model, 4 steps each
    python benchmarks/scale_cpu.py --model DIR --steps 6    # any Hugging Face folder
    python benchmarks/scale_cpu.py --ranks 1,2,4 --runs grpo,lora

Each rank is a `python -m pillion train` process started as torchrun starts it (WORLD_SIZE,
RANK, MASTER_ADDR/PORT in its environment), with one thread (OMP_NUM_THREADS=1) so that N
ranks use N cores. Per rank the benchmark reports:
- step time: the median `step_time` of metrics.jsonl after the first step (rank 0 logs the
  ranks' mean), rollout and update of `prompts_per_step` prompts x `group_size` samples;
- peak RSS: the process's `ru_maxrss` (os.wait4), which on a small model is mostly the Python
  and torch runtime;
- parameter + optimizer bytes: what the rank's policy parameters (a LoRA run's frozen base
  included) and AdamW state occupy after one optimizer step (FSDP2 keeps 1/N of each tensor per
  rank, so this falls as 1/N), measured
  by a separate short process per rank (`--child`) that builds the models as `pillion train`
  does.
On a 2-core machine N=2 is not expected to be faster (each rank has one core and the ranks
exchange every block's weights and gradients); the point is that it runs and that the bytes
each rank holds fall with sharding. Ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# The runs compared: GRPO; DAPO (dynamic sampling refills the batch, so a step may generate
# several batches and ranks hold different numbers of kept groups before balancing); GRPO with
# LoRA adapters (the frozen base sharded with them).
RUNS = {"grpo": [], "dapo": ["algo=dapo"], "lora": ["lora.rank=8", "lora.alpha=16"]}


def workload(out: Path, model: str, steps: int, run: str = "grpo") -> list[str]:
    return [f"out={out}", f"model={model}", f"steps={steps}", "prompts_per_step=8", "group_size=4",
            "max_new_tokens=32", "micro_batch=8", "save_every=1000", "data.heldout_size=2", "eval.k=1",
            "eval.max_new_tokens=8", "data.synthetic_size=400", "behaviour.kl_probe_every=0", *RUNS[run]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], ranks: int) -> list[dict]:
    """Run `cmd` on `ranks` ranks; per rank its exit code and peak RSS (bytes)."""
    port = free_port()
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(ranks),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(ranks),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if ranks == 1:  # one process: no process group at all
            env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    results = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
        if p.returncode != 0:
            sys.exit(f"scale_cpu: {' '.join(cmd[:4])} failed on a rank:\n{err[-3000:]}")
        results.append({"peak_rss": usage.ru_maxrss * 1024})
    return results


def child(model: str, out: str, run: str) -> None:
    """Build the policy and AdamW as `pillion train` does at this world size, take one optimizer
    step (so AdamW's moments exist), and write this rank's local parameter and optimizer bytes."""
    import torch
    from torch.distributed.tensor import DTensor

    from pillion import config as C
    from pillion.model.checkpoint import resolve_model
    from pillion.train import parallel
    from pillion.train.models import build_models, optimizer_target
    from pillion.train.optim import make_optimizer

    cfg = C.resolve(C.TrainConfig, overrides=workload(Path(out), model, 1, run))
    world = parallel.init(cfg)
    models = build_models(cfg, resolve_model(cfg.model), torch.device("cpu"), world)
    optimizer = make_optimizer(optimizer_target(models.policy, models.policy_params), cfg.optim, cfg.lr)
    for p in models.policy_params:
        p.grad = torch.zeros_like(p)
    optimizer.step()

    def local_bytes(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    params = sum(local_bytes(p) for p in models.policy.parameters())  # trained and frozen
    state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    Path(out, f"bytes-{world.rank}.json").write_text(json.dumps({"params": params, "optimizer": state}))
    parallel.close(world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="a Hugging Face folder (default: the shipped tiny model)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which of {', '.join(RUNS)}")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "OUT", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs.split(","):
            for n in (int(x) for x in args.ranks.split(",")):
                out = Path(tmp) / f"{run}{n}"
                ranks = launch([sys.executable, "-m", "pillion", "train", *workload(out, args.model, args.steps, run)],
                               n)
                metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                step_time = statistics.median(r["step_time"] for r in metrics[1:] or metrics)
                probe = Path(tmp) / f"bytes-{run}{n}"
                probe.mkdir()
                launch([sys.executable, str(Path(__file__).resolve()), "--child", args.model, str(probe), run], n)
                for rank, used in enumerate(ranks):
                    sizes = json.loads((probe / f"bytes-{rank}.json").read_text())
                    rows.append((run, n, rank, step_time, used["peak_rss"], sizes["params"], sizes["optimizer"],
                                 metrics[-1]["reward"]))
    print(f"{args.steps} steps of 8 prompts x 4 samples each (model: {args.model}); step time is rank 0's log")
    print(f"{'run':>5} {'N':>2} {'rank':>4} {'step s':>7} {'peak RSS MiB':>12} {'params MiB':>10} {'optim MiB':>9} "
          f"{'param+opt vs N=1':>16} {'last reward':>11}")
    first = {}
    for run, n, rank, step_time, rss, params, optim, reward in rows:
        first.setdefault(run, (n, step_time, params + optim))
        print(f"{run:>5} {n:>2} {rank:>4} {step_time:>7.2f} {rss / 2**20:>12.0f} {params / 2**20:>10.2f} "
              f"{optim / 2**20:>9.2f} {(params + optim) / first[run][2]:>16.2f} {reward:>11.3f}")
    for run, n, rank, step_time, *_ in rows:
        if rank == 0 and n != first[run][0]:
            print(f"{run}: step time N={n} / N={first[run][0]}: {step_time / first[run][1]:.2f}x (same global batch; "
                  f"the last step's reward is the same number at every N)")

if __name__ == "__main__":
    main()
