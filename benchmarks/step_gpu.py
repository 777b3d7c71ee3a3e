"""The whole RL step on one GPU: step time by phase, update tokens/s and MFU, beside TRL's step.

    python benchmarks/step_gpu.py                                   # skips without CUDA
    python benchmarks/step_gpu.py --trl-python /path/to/python       # + TRL's GRPOTrainer on the same model
    python benchmarks/step_gpu.py --smoke                            # the script's logic on CPU, tiny sizes
    python benchmarks/step_gpu.py --only pillion --json step.json    # one side; the measures as JSON too

A Qwen2.5-1.5B-shaped model (hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960,
vocabulary 151,936, tied embeddings), initialised at random by `transformers` and saved once
in bf16 to --model-dir; pillion's byte-level tokenizer. GRPO without a KL term (no reference
model), bf16 over float32 masters, 64 prompts x 8 samples x 512 tokens with EOS ignored (every
row is 512 tokens: pillion's engine gets no stop ids, TRL min_new_tokens = 512), the compiled
decode step and compiled training forward (`compile=true`), micro-batches of
--micro-batch-tokens packed tokens. pillion runs `--steps` steps of `pillion.train.rl.train`;
the first is a warm-up (compilation), the medians of the rest are printed per phase from its
metrics.jsonl (generate, grade, log-probs, update, other).

MFU of the update = the FLOPs it does, over time_update x the GPU's peak dense bf16 FLOP/s
(--peak-tflops; by default 989 for H100/H200, 312 for A100). FLOPs, forward and backward (3 x
the forward's 2 per multiply-add): 6 x the non-embedding parameters x the tokens the linear
layers see (each group's prompt once, `share_prompts`), 6 x vocabulary x hidden x the scored
response tokens (the LM head runs at those only), and the attention's 12 x layers x hidden x
sum over rows of length^2 / 2 (causal; every row attends over its whole prompt). Target: >= 50%.

TRL (when --trl-python imports trl and datasets): one warm-up and `--steps - 1` steps of
GRPOTrainer on the same folder and workload (bf16, beta 0, its own generation), timed from
step begin to step end, in a fresh process after pillion's has exited. Sized to finish in under
5 minutes on one H100 without TRL; TRL's generation through `transformers` adds minutes.
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
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
SMOKE = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6,
             tie_word_embeddings=True)
PHASES = ("time_generate", "time_grade", "time_logprobs", "time_update", "time_other")
LR = 1e-6


def make_model(folder: Path, shape: dict) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pillion.model.tiny import make_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    # Initialised on the GPU where there is one: seconds instead of a minute of CPU initialisation.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def pillion_run(args, work: Path) -> dict:
    """`args.steps` steps of pillion's loop; the counted steps' phases, tokens and MFU inputs."""
    import torch

    from pillion import config as C
    from pillion.model.checkpoint import load_model
    from pillion.model.sequences import packed_layout
    from pillion.train import rl

    real_rollout = rl.rollout
    update_tokens: list[tuple[int, int, int]] = []  # per step: (linear-layer tokens, scored tokens, sum of length^2)
    real_make_batch = rl.make_batch

    def no_eos(engine, *a, **k):
        engine.eos_ids = []  # fixed length: every row runs to max_new_tokens
        return real_rollout(engine, *a, **k)

    def counted(samples, *a, **k):
        batch = real_make_batch(samples, *a, **k)
        lengths = batch.seqs.attention_mask.sum(-1).float()  # [B]
        layout = packed_layout(batch.seqs)  # each repeated prompt once
        linear = len(layout.ids)  # the real tokens when no prompt repeats
        update_tokens.append((linear, int(batch.seqs.response_mask.sum()), int((lengths**2).sum())))
        return batch

    rl.rollout, rl.make_batch = no_eos, counted
    out = work / "pillion-run"
    cfg = C.resolve(C.TrainConfig, overrides=[
        f"model={args.model_dir}", f"out={out}", f"steps={args.steps}", f"prompts_per_step={args.prompts}",
        f"group_size={args.samples}", f"max_new_tokens={args.tokens}", f"lr={LR}", "loss.kl_coef=0",
        f"device={args.device}", f"dtype={args.dtype}", f"compile={str(not args.smoke).lower()}",
        "micro_batch=100000", f"micro_batch_tokens={args.micro_batch_tokens}", "data.template=qa",
        "data.heldout_size=1", "eval.k=1", "eval.max_new_tokens=1", "save_every=100000",
        "data.synthetic_size=2000"])
    cfg.steps = args.steps
    start = time.perf_counter()
    rl.train(cfg, overwrite=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time_update" in r][1:]  # the first step compiles
    params = sum(p.numel() for p in load_model(args.model_dir, device="meta").parameters())
    return {"rows": rows, "tokens": update_tokens[1:], "params": params, "seconds": time.perf_counter() - start,
            "peak_memory": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None}


def trl_child(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    prompts = [f"Question: what is {i} + {i + 1}?\nAnswer:" for i in range(args.prompts * (args.steps + 1))]
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=args.prompts * args.samples,
                            num_generations=args.samples, max_completion_length=args.tokens, max_steps=args.steps,
                            learning_rate=LR, beta=0.0, bf16=torch.cuda.is_available(),
                            use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
                            logging_steps=1, disable_tqdm=True, seed=0, temperature=1.0,
                            generation_kwargs={"min_new_tokens": args.tokens})
        trainer = GRPOTrainer(model=str(args.model_dir), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                              args=config, train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=tokenizer, callbacks=[Clock()])
        trainer.train()
    print(json.dumps({"steps": times}), flush=True)


def peak_flops(args) -> float:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return (312e12 if "A100" in name else 989e12)  # H100 / H200 SXM dense bf16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "pillion-qwen2.5-1.5b-random")
    p.add_argument("--steps", type=int, default=3, help="steps of each, the first a warm-up")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--micro-batch-tokens", type=int, default=32768)
    p.add_argument("--peak-tflops", type=float, help="the GPU's peak dense bf16 TFLOP/s (default: by its name)")
    p.add_argument("--trl-python", help="python of an environment with trl (or $PILLION_TRL_PYTHON)")
    p.add_argument("--only", choices=["all", "pillion", "trl"], default="all", help="one side only")
    p.add_argument("--json", type=Path, help="also write the measures to this JSON file")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks this script, measures nothing")
    p.add_argument("--child", choices=["trl"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device, args.dtype = ("cpu", "float32") if args.smoke else ("cuda", "bfloat16")
    if args.smoke:
        args.model_dir = Path(tempfile.gettempdir()) / "pillion-step-gpu-smoke"
        args.prompts, args.samples, args.tokens, args.micro_batch_tokens = 2, 2, 16, 64
    if args.child:
        trl_child(args)
        return 0

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("step_gpu: CUDA is not available; skipping (run on a GPU machine, or --smoke to check the script)")
        return 0
    if not (args.model_dir / "config.json").exists():
        print(f"writing a random Qwen2.5-1.5B-shaped model (bf16) to {args.model_dir} ...", flush=True)
        make_model(args.model_dir, SMOKE if args.smoke else QWEN25_15B)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu (smoke)"
    print(f"{device}: {args.prompts} prompts x {args.samples} samples x {args.tokens} tokens, {args.dtype}, "
          f"micro-batches of {args.micro_batch_tokens} tokens, {args.steps} steps (first a warm-up)", flush=True)
    result: dict = {"device": device}
    code = 0 if args.only == "trl" else pillion_side(args, result)
    if code == 0 and args.only != "pillion":
        trl_side(args, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return code


def pillion_side(args, result: dict) -> int:
    """pillion's steps: the median phases, update tokens/s and MFU printed and put in `result`."""
    ours = pillion_run(args, Path(tempfile.mkdtemp(prefix="pillion-step-gpu-")))
    rows = ours["rows"]
    if not rows:
        print("pillion: no counted step (use --steps >= 2)")
        return 1
    med = {k: statistics.median(r[k] for r in rows) for k in (*PHASES, "step_time")}
    print("pillion median step {:.2f} s: ".format(med["step_time"])
          + ", ".join(f"{k[5:]} {med[k]:.2f} s ({100 * med[k] / med['step_time']:.0f}%)" for k in PHASES))
    tokens, scored, squares = (statistics.median(step[i] for step in ours["tokens"]) for i in range(3))
    cfg = QWEN25_15B if not args.smoke else SMOKE
    head = cfg["vocab_size"] * cfg["hidden_size"]  # the LM head (tied: also the embedding, counted once)
    body = ours["params"] - head * (1 if cfg["tie_word_embeddings"] else 2)
    flops = (6 * body * tokens + 6 * head * scored
             + 12 * cfg["num_hidden_layers"] * cfg["hidden_size"] * squares / 2)  # forward + backward, causal
    mfu = flops / med["time_update"] / peak_flops(args)
    print(f"update: {tokens:.0f} tokens through the linear layers ({scored:.0f} scored), "
          f"{tokens / med['time_update']:.0f} tokens/s, "
          f"MFU {100 * mfu:.1f}% (target >= 50%)"
          + (f"; peak memory {ours['peak_memory'] / 2**30:.1f} GiB" if ours["peak_memory"] else ""), flush=True)
    result.update(step_s=med["step_time"], phases_s={k[5:]: med[k] for k in PHASES},
                  update_tokens_per_s=tokens / med["time_update"], mfu=mfu, run_s=ours["seconds"],
                  peak_memory_gib=ours["peak_memory"] / 2**30 if ours["peak_memory"] else None)
    return 0


def trl_side(args, result: dict) -> None:
    """TRL's GRPOTrainer on the same folder and workload, in a fresh process under its interpreter."""
    trl = trl_python(args)
    if not trl:
        print("TRL: skipped (pass --trl-python or set PILLION_TRL_PYTHON to a python that imports trl, datasets)")
        return
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [trl, __file__, "--child", "trl", "--model-dir", str(args.model_dir), "--steps", str(args.steps),
           "--prompts", str(args.prompts), "--samples", str(args.samples), "--tokens", str(args.tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        print("TRL failed: " + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]))
        return
    theirs = json.loads(lines[-1])["steps"][1:]
    if theirs:
        result["trl_step_s"] = trl_step = statistics.median(theirs)
        ratio = f"; TRL / pillion {trl_step / result['step_s']:.2f}x" if "step_s" in result else ""
        print(f"TRL median step {trl_step:.2f} s{ratio}")


if __name__ == "__main__":
    sys.exit(main())
