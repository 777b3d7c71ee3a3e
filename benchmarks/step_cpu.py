"""The whole RL step, pillion beside TRL's GRPOTrainer, on CPU: median step time and the ratio.

    python benchmarks/step_cpu.py                                    # all three workloads
    python benchmarks/step_cpu.py --workloads tiny --steps 8
    python benchmarks/step_cpu.py --trl-python PATH/TO/venv-trl/bin/python   # or $PILLION_TRL_PYTHON
    python benchmarks/step_cpu.py --threads 1     # both sides on one intra-op thread
    python benchmarks/step_cpu.py --workload readme --eager-only [--kl 0.04]   # the README's default job

Workloads (GRPO, no KL term on either side, so neither runs a reference model; on-policy, one
optimizer step per rollout; the same checkpoint folder, sizes and learning rate for both):

  tiny      a random tiny Qwen2 (hidden 96, 3 layers), 8 prompts x 8 samples x 64 tokens, EOS
            ignored (pillion: the engine's stop ids emptied; TRL: min_new_tokens = 64);
  24m       a random 24M-parameter Qwen2 (hidden 512, 8 layers, 8 heads, 2 KV heads,
            intermediate 1536), 4 prompts x 4 samples x 64 tokens, EOS ignored likewise;
  longtail  the shipped tiny arithmetic model with max_new_tokens 384 and EOS honoured: most
            answers stop within ~40 tokens, a few ramble to the cap. Also prints the padding
            fraction of the update's tokens before packing ([B, P + T] padded rows) and after
            (the packed forward holds the rows' real tokens only), and the share of those real
            tokens the linear layers see when each group's prompt runs once;
  readme    the README's default job: the shipped model, 32 prompts x 8 samples x 48 tokens, EOS
            honoured, the default job's data, template and learning rate (not part of "all").

`--kl C` puts a k3 KL term of coefficient C in both losses (pillion loss.kl_coef, TRL beta), so
each side runs its reference model. A workload may also be named MODEL/PxSxT (tiny or 24m, P
prompts x S samples x T tokens, EOS ignored): benchmarks/scaling_cpu.py runs its grid that way.

Three processes per workload: pillion as configured (eager), pillion with `compile=true` (the
decode step and the training forward/backward through torch.compile; its first step, not
counted, compiles for ~0.5-1 min; `--eager-only` skips it) and TRL, each in its own process
(pillion's `pillion.train.rl.train`, TRL's `GRPOTrainer.train`), held at the start of every
step until this process says go, so that their steps alternate: pillion's step k, pillion+
compile's step k, TRL's step k, pillion's step k + 1, ... A step's time runs from its go to
the next step's start (generation, grading, the update, logging). The first step of each is a
warm-up and not counted; the medians of the rest are printed with the ratios (TRL / pillion:
above 1, pillion is faster), in wall seconds and in each process's CPU seconds (all threads;
on a shared machine the steadier measure). Prompts: pillion samples its synthetic arithmetic
pool (levels 1-2), TRL gets problems drawn from the same generator, rendered with the same
template and scored by the same `pillion.rewards.score`. TRL runs in float32 without gradient
checkpointing, as pillion does here (GRPOConfig's own defaults are bf16, which on the CPU is
autocast, and gradient checkpointing: `--trl-defaults` runs those, not like for like). TRL is
skipped when its interpreter cannot import trl and datasets. Nothing is downloaded.

`--threads N` sets torch's intra-op threads in both processes alike (default: torch's own, one
per core). On a machine shared with other work, tiny models run much faster on one thread on
either side (a busy core stalls the other thread at every op's barrier), so the ratio under
load depends on it: compare both settings.
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

from trl_env import trl_python  # benchmarks/trl_env.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
LR, TEMPLATE = 1e-5, "qa"
MODELS = {"tiny": dict(hidden_size=96, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=256),
          "24m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1536)}
# name -> (model spec or "default", prompts, samples, max_new_tokens, ignore EOS)
WORKLOADS = {
    "tiny": (MODELS["tiny"], 8, 8, 64, True),
    "24m": (MODELS["24m"], 4, 4, 64, True),
    "longtail": ("default", 8, 8, 384, False),
}
README = ("default", 32, 8, 48, False)  # the default job's sizes (pillion/config.py TrainConfig)


def workload(name: str) -> tuple:
    """(model spec, prompts, samples, tokens, ignore EOS) of a named workload or of MODEL/PxSxT."""
    if name == "readme":
        return README
    if name in WORKLOADS:
        return WORKLOADS[name]
    model, _, sizes = name.partition("/")
    prompts, samples, tokens = (int(x) for x in sizes.split("x"))
    return MODELS[model], prompts, samples, tokens, True


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gate(info: dict | None = None) -> bool:
    """Report the step that just ended (if any), say ready, and wait: True = go, False = stop."""
    print("STEP " + json.dumps(info or {}), flush=True)
    return sys.stdin.readline().strip() == "go"


class Clock:
    def __init__(self):
        self.wall = self.cpu = None

    def lap(self) -> dict:
        now, cpu = time.perf_counter(), time.process_time()
        out = {} if self.wall is None else {"wall": now - self.wall, "cpu": cpu - self.cpu}
        self.wall, self.cpu = now, cpu
        return out


def set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def pillion_child(args) -> None:
    set_threads(args)
    import torch

    from pillion import config as C
    from pillion.model.sequences import packed_layout
    from pillion.train import rl

    model, prompts, samples, new, ignore_eos = workload(args.workloads)
    clock, padding = Clock(), []
    real_rollout, real_make_batch = rl.rollout, rl.make_batch

    def gated_rollout(engine, *a, **k):
        if ignore_eos:
            engine.eos_ids = []  # every row runs to max_new_tokens, as TRL's min_new_tokens
        info = {**clock.lap(), "threads": torch.get_num_threads(), "rss": peak_rss()}
        if padding:
            info["padding"] = padding.pop()
        if not gate(info):
            raise SystemExit(0)
        clock.lap()
        return real_rollout(engine, *a, **k)

    def measured_batch(samples_, *a, **k):
        batch = real_make_batch(samples_, *a, **k)
        real = float(batch.seqs.attention_mask.sum())
        layout = packed_layout(batch.seqs)  # each repeated prompt once
        once = len(layout.ids)  # the real tokens when no prompt repeats
        # padding before packing (packed: 0, real tokens only); real tokens left after sharing prompts
        padding.append({"padding": 1.0 - real / batch.seqs.attention_mask.numel(), "shared": once / real})
        return batch

    rl.rollout, rl.make_batch = gated_rollout, measured_batch
    sizes = [f"model={args.model_dir}", f"out={args.out}", f"steps={args.steps + 1}", f"prompts_per_step={prompts}",
             f"group_size={samples}", f"max_new_tokens={new}", f"loss.kl_coef={args.kl}", "data.heldout_size=1",
             "eval.k=1", "eval.max_new_tokens=1", "save_every=100000"]
    if args.threads:  # the same on both sides (otherwise pillion's threads=auto chooses)
        sizes.append(f"threads={args.threads}")
    if args.workloads != "readme":  # readme: the default job's data, template, learning rate and micro-batch
        sizes += [f"lr={LR}", "micro_batch=1024", f"data.template={TEMPLATE}", "data.synthetic_size=2000"]
    cfg = C.resolve(C.TrainConfig, overrides=[*sizes, *args.extra])
    rl.train(cfg, overwrite=True)


def trl_child(args) -> None:
    set_threads(args)
    import torch
    from transformers import TrainerCallback

    clock = Clock()

    class Gate(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            if not gate({**clock.lap(), "threads": torch.get_num_threads(), "rss": peak_rss()}):
                raise SystemExit(0)
            clock.lap()

    with tempfile.TemporaryDirectory() as out_dir:
        trl_trainer(args, args.steps + 1, out_dir, [Gate()]).train()


def trl_trainer(args, steps: int, out_dir: str, callbacks: list):
    """TRL's GRPOTrainer for the workload `args.workloads` on `args.model_dir` (KL `args.kl`),
    `steps` optimizer steps, writing nothing to `out_dir` (no saves, no reports)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pillion.data.synthetic import generate
    from pillion.data.templates import render_prompt
    from pillion.rewards import RewardConfig, score

    _, prompts, samples, new, ignore_eos = workload(args.workloads)
    readme = args.workloads == "readme"
    # readme: the default job's levels (the curriculum's default) and learning rate
    problems = generate(prompts * (steps + 1), **({} if readme else {"levels": (1, 2)}), seed=0)
    by_question = {p.question: p for p in problems}
    reward_cfg = RewardConfig(answer_style="boxed")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    def reward(prompts, completions, question, completion_ids, **kwargs):
        return [score(by_question[q], c, len(ids), reward_cfg).score
                for q, c, ids in zip(question, completions, completion_ids)]

    dataset = Dataset.from_dict({"prompt": [render_prompt(p, TEMPLATE, tokenizer) for p in problems],
                                 "question": [p.question for p in problems]})
    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=prompts * samples, num_generations=samples,
                        max_completion_length=new, max_steps=steps,
                        learning_rate=1e-4 if readme else LR, beta=args.kl,
                        temperature=1.0, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                        disable_tqdm=True, seed=0, model_init_kwargs={"dtype": torch.float32},
                        generation_kwargs={"min_new_tokens": new} if ignore_eos else None,
                        # like for like: float32 and no activation checkpointing, as pillion runs here
                        # (GRPOConfig's own defaults, --trl-defaults: bf16 autocast on the CPU and
                        # gradient checkpointing)
                        **({} if getattr(args, "trl_defaults", False) else
                           {"bf16": False, "gradient_checkpointing": False}))
    return GRPOTrainer(model=args.model_dir, reward_funcs=reward, args=config, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=callbacks)


def make_model(name: str, folder: Path) -> Path:
    from pillion.model.tiny import make_tiny_checkpoint
    from pillion.train.common import resolve_model

    spec = workload(name)[0]
    if spec == "default":
        return Path(resolve_model("default"))
    if not (folder / "config.json").exists():
        make_tiny_checkpoint(folder, "qwen2", max_position_embeddings=4096, **spec)  # room for 2048 new tokens
    return folder


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


class Child:
    """A gated child process: `step()` lets it run one step and returns what it reported."""

    def __init__(self, python: str, kind: str, workload: str, model_dir: Path, out: Path, args, extra=()):
        cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--workloads", workload, "--model-dir",
               str(model_dir), "--out", str(out), "--steps", str(args.steps), "--threads", str(args.threads),
               "--kl", str(args.kl), *(["--trl-defaults"] if getattr(args, "trl_defaults", False) else []),
               *sum([["--extra", e] for e in [*args.extra, *extra]], [])]
        self.log = open(out.with_suffix(f".{kind}.log"), "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=child_env())
        self.ready = self._wait()

    def _wait(self) -> dict | None:
        for line in self.proc.stdout:
            if line.startswith("STEP "):
                return json.loads(line[5:])
        return None  # exited: see the log

    def step(self) -> dict | None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=600)
        self.log.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_workload(name: str, args, trl: str | None, work: Path) -> dict[str, dict[str, float]]:
    """Runs the workload's processes step by step in turn and prints the medians; returns them
    ({who: {wall, cpu, rss}}; empty when a process exited early)."""
    model_dir = make_model(name, work / f"model-{name.split('/')[0]}")
    _, prompts, samples, new, ignore_eos = workload(name)
    print(f"\n{name}: {prompts} prompts x {samples} samples x {new} tokens{' (EOS ignored)' if ignore_eos else ''}, "
          f"model {model_dir}", flush=True)
    tag = name.replace("/", "-")
    outs = {"pillion": work / f"{tag}-pillion", "pillion+compile": work / f"{tag}-pillion-compiled"}
    children = {"pillion": Child(sys.executable, "pillion", name, model_dir, outs["pillion"], args)}
    if not args.eager_only:
        children["pillion+compile"] = Child(sys.executable, "pillion", name, model_dir, outs["pillion+compile"], args,
                                            ["compile=true"])
    if trl:
        children["TRL"] = Child(trl, "trl", name, model_dir, work / f"{tag}-trl", args)
    times: dict[str, list[dict]] = {k: [] for k in children}
    for _ in range(args.steps):  # alternating: one step of each in turn
        for who, child in children.items():
            report = child.step()
            if report is None:
                print(f"  {who} exited early; its log: {child.log.name}")
                for other in children.values():
                    other.stop()
                return {}
            times[who].append(report)
    for child in children.values():
        child.stop()
    counted = {who: rows[1:] for who, rows in times.items()}  # the first step is a warm-up
    for who, rows in counted.items():
        print(f"  {who:15s} median step {median([r['wall'] for r in rows]):.3f} s wall, "
              f"{median([r['cpu'] for r in rows]):.3f} s CPU  (steps: "
              + ", ".join(f"{r['wall']:.2f}" for r in rows) + f"; {rows[-1].get('threads', '?')} thread(s))")
    ours = [who for who in counted if who.startswith("pillion")]
    for who in ours:
        if "TRL" in counted:
            wall = median([r["wall"] for r in counted["TRL"]]) / median([r["wall"] for r in counted[who]])
            cpu = median([r["cpu"] for r in counted["TRL"]]) / median([r["cpu"] for r in counted[who]])
            print(f"  TRL / {who}: {wall:.2f}x wall, {cpu:.2f}x CPU")
    for who in ours:
        metrics = outs[who] / "metrics.jsonl"
        if metrics.exists():  # pillion's own step-time breakdown (train/update.py step_times), medians
            rows = [json.loads(line) for line in metrics.read_text().splitlines()][1:]
            phases = {p: median([r[p] for r in rows if p in r]) for p in ("time_generate", "time_grade",
                                                                           "time_logprobs", "time_update")}
            # time_other is not read: here it holds the wait at the gate, inside the step's clock
            other = median([r["wall"] for r in counted[who]]) - sum(phases.values())
            print(f"  {who} phases (median s): " + ", ".join(f"{p[5:]} {v:.3f}" for p, v in phases.items())
                  + f", other {other:.3f}")
    pads = [r["padding"] for r in times["pillion"] if "padding" in r]
    if pads:
        print(f"  update padding: {median([p['padding'] for p in pads]):.3f} of [B, P + T] before packing, 0.000 after "
              f"(packed rows hold only real tokens); with each group's prompt once, the linear layers see "
              f"{median([p['shared'] for p in pads]):.3f} of the real tokens")
    return {who: {"wall": median([r["wall"] for r in rows]), "cpu": median([r["cpu"] for r in rows]),
                  "rss": max(r.get("rss", 0) for r in times[who])} for who, rows in counted.items()}


def add_trl_defaults(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trl-defaults", action="store_true",
                   help="TRL with GRPOConfig's own defaults (bf16 autocast on the CPU, gradient checkpointing) "
                        "instead of float32 without checkpointing as pillion runs (not like for like)")


def begin(args, setting: str) -> str | None:
    """The run's first lines (threads, `setting`, load; TRL or why not) and its work folder;
    returns TRL's python, or None."""
    trl = trl_python(args)
    print(f"threads: {args.threads or 'torch default'} on both sides; {setting}; load average {os.getloadavg()[0]:.1f}")
    print("TRL: " + ("GRPOConfig's defaults (bf16 autocast, gradient checkpointing)" if args.trl_defaults else
                     "float32, no gradient checkpointing (bf16=False, gradient_checkpointing=False), as pillion"))
    if not trl:
        print("TRL: skipped (pass --trl-python or set PILLION_TRL_PYTHON to a python that imports trl, datasets)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    return trl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", "--workload", default=",".join(WORKLOADS),
                   help=f"comma-separated among {', '.join(WORKLOADS)}, readme, or MODEL/PxSxT")
    p.add_argument("--steps", type=int, default=5, help="steps of each, the first a warm-up")
    p.add_argument("--trl-python", help="python of an environment with trl (or $PILLION_TRL_PYTHON)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "pillion-step-cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on both sides (0: torch's default)")
    p.add_argument("--extra", action="append", default=[], help="a pillion key=value override (repeatable)")
    p.add_argument("--kl", type=float, default=0.0, help="k3 KL coefficient on both sides (default 0: no reference)")
    p.add_argument("--eager-only", action="store_true",
                   help="skip the third process, pillion with compile=true (its first step compiles for ~0.5-1 min)")
    add_trl_defaults(p)
    p.add_argument("--child", choices=["pillion", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        (pillion_child if args.child == "pillion" else trl_child)(args)
        return 0
    names = args.workloads.split(",")
    unknown = [n for n in names if n != "readme" and n not in WORKLOADS and n.split("/")[0] not in MODELS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose among {', '.join(WORKLOADS)}")
    trl = begin(args, f"KL coefficient {args.kl}")
    for name in names:
        run_workload(name, args, trl, args.work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
