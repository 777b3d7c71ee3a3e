"""How one GRPO step grows with the answer's length and the group's size, pillion beside TRL, on CPU.

    python benchmarks/scaling_cpu.py --trl-python PATH/TO/venv-trl/bin/python   # the whole grid (long)
    python benchmarks/scaling_cpu.py --quick --trl-python ...                   # tiny model, group 4 only
    python benchmarks/scaling_cpu.py --models 24m --tokens 128,512 --groups 4   # any part of the grid

Grid: the tiny and the 24M-parameter random Qwen2 of step_cpu.py, one prompt per step,
max_new_tokens 128 / 512 / 2048 with EOS ignored (every row is that long: pillion's engine gets
no stop ids, TRL min_new_tokens), groups of 4 and 16; GRPO without a KL term on either side (no
reference model), the same checkpoint folder, one optimizer step per rollout. Each point is
step_cpu.py's run of the workload MODEL/1xGxT: pillion and TRL in their own processes, their
steps alternating (the first of each a warm-up, not counted), so that both meet the same load.

Printed per point: each side's median step (wall and CPU seconds), generated tokens per second
of the step, the process's peak RSS, and TRL / pillion. Then the growth: for each model, group
and side, the time per generated token at each length over its value at the shortest, and the
exponent of a least-squares fit step_time ~ tokens^k over the lengths (k = 1: linear; attention
over the whole cache at every decode step makes it grow towards 2 at long lengths).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import step_cpu  # benchmarks/step_cpu.py (the script's folder is on sys.path)


def fit_exponent(tokens: list[int], seconds: list[float]) -> float:
    """k of the least-squares line log(seconds) = k log(tokens) + c."""
    xs, ys = [math.log(t) for t in tokens], [math.log(s) for s in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,24m", help="comma-separated among tiny, 24m")
    p.add_argument("--tokens", default="128,512,2048", help="max_new_tokens values (EOS ignored)")
    p.add_argument("--groups", default="4,16", help="group sizes (samples of the one prompt)")
    p.add_argument("--quick", action="store_true", help="the tiny model at group 4 only")
    p.add_argument("--steps", type=int, default=2, help="steps of each side per point, the first a warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on both sides (0: torch's default)")
    p.add_argument("--trl-python", help="python of an environment with trl (or $PILLION_TRL_PYTHON)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pillion-scaling-cpu")
    step_cpu.add_trl_defaults(p)
    args = p.parse_args()
    if args.quick:
        args.models, args.groups = "tiny", "4"
    models, tokens, groups = args.models.split(","), [int(t) for t in args.tokens.split(",")], \
        [int(g) for g in args.groups.split(",")]
    unknown = [m for m in models if m not in step_cpu.MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose among {', '.join(step_cpu.MODELS)}")
    # what step_cpu.run_workload reads of its arguments: pillion eager only, no KL, no extra keys
    args.extra, args.kl, args.eager_only = [], 0.0, True
    trl = step_cpu.begin(args, f"{args.steps} steps per side and point (the first a warm-up)")
    points: dict[tuple[str, int, int], dict] = {}
    for model in models:
        for group in groups:
            for new in tokens:
                points[model, group, new] = step_cpu.run_workload(f"{model}/1x{group}x{new}", args, trl,
                                                                  args.work_dir)

    print(f"\n{'model':5} {'group':>5} {'tokens':>6}  {'side':8} {'step s':>8} {'cpu s':>8} {'tok/s':>8} "
          f"{'ms/tok':>7} {'peak RSS':>9}  TRL/pillion")
    for (model, group, new), sides in points.items():
        for who, m in sides.items():
            ratio = ""
            if who == "TRL" and "pillion" in sides:
                ours = sides["pillion"]
                ratio = f"{m['wall'] / ours['wall']:.2f}x wall, {m['cpu'] / ours['cpu']:.2f}x cpu"
            generated = group * new
            print(f"{model:5} {group:5d} {new:6d}  {who:8} {m['wall']:8.2f} {m['cpu']:8.2f} "
                  f"{generated / m['wall']:8.0f} {1000 * m['wall'] / generated:7.2f} "
                  f"{m['rss'] / 2**20:7.0f} MB  {ratio}")
    print("\ngrowth of the time per generated token with the length (CPU seconds; 1.00 = linear):")
    for model in models:
        for group in groups:
            for who in ("pillion", "TRL"):
                runs = [(new, points[model, group, new].get(who)) for new in tokens]
                runs = [(new, m) for new, m in runs if m]
                if len(runs) < 2:
                    continue
                base = runs[0][1]["cpu"] / runs[0][0]
                cells = ", ".join(f"{new}: {m['cpu'] / new / base:.2f}" for new, m in runs)
                k = fit_exponent([new for new, _ in runs], [m["cpu"] for _, m in runs])
                print(f"  {model} group {group} {who}: per token {cells}; step ~ tokens^{k:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
