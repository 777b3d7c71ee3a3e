"""pillion's generation engine against the engine before continuous batching and `transformers`
`generate`, side by side, on CPU.

    python benchmarks/rollout_cpu.py [--workload all] [--batch 32] [--new 128] [--repeats 20] [--no-compile]
    python benchmarks/rollout_cpu.py --workload longtail [--slots 64]

Every engine is timed in the same run on the same prompts and sampling (temperature 1.0, top-p
1.0, top-k off); best of `--repeats` after a warm-up, the engines interleaved within each
repeat so that a slow moment of the machine hits all of them. Workloads:

  fixed     a tiny random checkpoint (hidden 64, 2 layers, built here) with EOS ignored, so all
            produce exactly batch x new tokens: the per-token cost of the decode loop;
  arith     the shipped tiny arithmetic model on arithmetic prompts with EOS honoured, as in an
            RL rollout: samples finish at different lengths;
  groups    the same model with batch/8 prompts x 8 samples each, as GRPO samples a group per
            prompt (pillion prefills each prompt once; transformers uses num_return_sequences);
  longtail  RL-like long tails: the tiny random checkpoint with 8 of its 320 tokens declared EOS,
            so a sample stops with probability ~1/40 per token (lengths ~geometric, mean ~40,
            capped at 256 new tokens); 64 prompts x 4 samples with at most `--slots` rows in
            memory at once. pillion admits every row into `--slots` slots as others finish
            (continuous batching, one call); the previous engine and transformers decode
            fixed batches of `--slots` rows, each as long as its longest sample.

Engines: `pillion` (this engine, eager decode step), `pillion+compile` (its compiled step,
compile time excluded), `previous` (the engine as of commit `--previous`, before continuous
batching, loaded from git history beside this one; skipped when git or the commit is missing;
`+compile` likewise), `transformers` (plain `generate`, tokens only) and `transformers+logp`
(`generate` also returning the per-token log-probabilities an RL rollout needs: `output_scores`
+ `compute_transition_scores`, which with temperature 1 and no top-k/top-p are what pillion
returns). Prints tokens/s of each and the ratios. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# One in-process compile thread: inductor's background worker pool would otherwise compete with
# the timed runs on a 2-core machine.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
import time

import torch

PREVIOUS = "47e35b4"  # main before continuous batching: fixed batches, left-padded, compaction


def count_hf_tokens(out: torch.Tensor, prompt_len: int, eos: list[int]) -> int:
    """Generated tokens per row up to and including the first EOS (the rest is padding)."""
    total = 0
    for row in out[:, prompt_len:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        total += stop + 1 if stop is not None else len(row)
    return total


def load_previous(ref: str):
    """(engine module, transformer module) of pillion at git commit `ref`, imported from its
    files under other names, or None when git or the commit is not there."""
    root = Path(__file__).resolve().parents[1]
    out = Path(tempfile.mkdtemp())
    modules = {}
    for path, name in (("pillion/model/transformer.py", "previous_transformer"),
                       ("pillion/rollout/engine.py", "previous_engine")):
        try:
            text = subprocess.run(["git", "-C", str(root), "show", f"{ref}:{path}"], capture_output=True, text=True,
                                  check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        (out / f"{name}.py").write_text(text.replace("from pillion.model.transformer import",
                                                     "from previous_transformer import"))
        spec = importlib.util.spec_from_file_location(name, out / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = modules[name]
        spec.loader.exec_module(modules[name])
    return modules["previous_engine"], modules["previous_transformer"]


def previous_model(model, transformer_module):
    """The same weights in the previous commit's Transformer class."""
    fields = {f.name: getattr(model.cfg, f.name) for f in dataclasses.fields(model.cfg)}
    old = transformer_module.Transformer(transformer_module.ModelConfig(**fields))
    old.load_state_dict(model.state_dict())
    return old.eval()


def bench(name, folder, prompts, new_tokens, eos_ids, repeats, args, n=1, slots=None):
    """Time every engine on `prompts` x `n` samples. slots: rows in memory at once (None: all);
    pillion then runs one call with `max_rows=slots`, the others fixed batches of `slots` rows."""
    from transformers import AutoModelForCausalLM

    from pillion.model.checkpoint import load_model
    from pillion.model.tokenizer import load_tokenizer
    from pillion.rollout.engine import Engine, SamplingParams
    from pillion.rollout.step import compiled_decode_step

    tokenizer = load_tokenizer(folder)
    model = load_model(folder).eval()
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, seed=0)
    per_call = len(prompts) if slots is None else max(1, slots // n)  # prompts per fixed batch
    batches = [prompts[i : i + per_call] for i in range(0, len(prompts), per_call)]
    engines: dict = {"pillion": Engine(model, tokenizer, eos_ids, max_rows=slots)}
    previous = None if args.previous == "none" else load_previous(args.previous)
    if previous is not None:
        old_engine, old_transformer = previous
        old_params = old_engine.SamplingParams(n=n, temperature=1.0, max_new_tokens=new_tokens, seed=0)
        engines["previous"] = old_engine.Engine(previous_model(model, old_transformer), tokenizer, eos_ids)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer.padding_side = "left"
    encoded = [tokenizer(b, return_tensors="pt", padding=True, add_special_tokens=False) for b in batches]

    def run_pillion(engine) -> int:
        return sum(len(c.ids) for c in engine.generate(prompts, params))

    def run_previous(engine) -> int:
        return sum(len(c.ids) for b in batches for c in engine.generate(b, old_params))

    def hf_generate(with_logprobs: bool) -> int:
        total = 0
        with torch.inference_mode():
            for enc in encoded:
                out = hf.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                  min_new_tokens=1 if eos_ids else new_tokens, eos_token_id=eos_ids or None,
                                  pad_token_id=tokenizer.pad_token_id, num_return_sequences=n,
                                  output_scores=with_logprobs, return_dict_in_generate=with_logprobs)
                if with_logprobs:
                    hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                    out = out.sequences
                total += count_hf_tokens(out, enc.input_ids.shape[1], eos_ids)
        return total

    runs = {"pillion": lambda: run_pillion(engines["pillion"])}
    if previous is not None:
        runs["previous"] = lambda: run_previous(engines["previous"])
    runs["transformers"] = lambda: hf_generate(False)
    runs["transformers+logp"] = lambda: hf_generate(True)
    if not args.no_compile:
        # Built at their own warm-up, after the eager engines have warmed up.
        def compiled(label, make, call):
            def run():
                if label not in engines:
                    engines[label] = make()
                return call(engines[label])
            return run

        runs["pillion+compile"] = compiled("pillion+compile", lambda: Engine(
            model, tokenizer, eos_ids, max_rows=slots, decode_fn=compiled_decode_step()), run_pillion)
        if previous is not None:
            runs["previous+compile"] = compiled("previous+compile", lambda: old_engine.Engine(
                previous_model(model, old_transformer), tokenizer, eos_ids,
                # a commit from e024388 on keeps the step in rollout/step.py, which imports as this tree's
                decode_fn=getattr(old_engine, "compiled_decode_step", compiled_decode_step)()), run_previous)
    frames = {}
    for label, fn in runs.items():
        before = torch._dynamo.utils.counters["frames"]["ok"]
        fn()  # warm-up (and the compile)
        frames[label] = torch._dynamo.utils.counters["frames"]["ok"] - before
    best, tokens = {label: float("inf") for label in runs}, {}
    for _ in range(repeats):
        for label, fn in runs.items():
            start = time.perf_counter()
            tokens[label] = fn()
            best[label] = min(best[label], time.perf_counter() - start)
    rates = {label: tokens[label] / best[label] for label in runs}
    for label in runs:
        compiled_note = f"  ({frames[label]} compiled frame(s))" if label.endswith("+compile") else ""
        print(f"  {label:<18} {tokens[label]:6d} tokens in {best[label]:.3f} s -> {rates[label]:9,.0f} tokens/s"
              f"{compiled_note}")
    for ours in [label for label in ("pillion", "pillion+compile") if label in rates]:
        ratios = [f"{rates[ours] / rates[ref]:.2f}x {ref}" for ref in rates if not ref.startswith("pillion")]
        print(f"  {name}: {ours} = " + ", ".join(ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="rows of the fixed/arith workloads")
    ap.add_argument("--new", type=int, default=128, help="max new tokens per sequence (longtail: 256)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workload", choices=("fixed", "arith", "groups", "longtail", "all"), default="all")
    ap.add_argument("--slots", type=int, default=64, help="longtail: rows in memory at once")
    ap.add_argument("--samples", type=int, default=4, help="longtail: samples per prompt")
    ap.add_argument("--previous", default=PREVIOUS, help="git commit of the previous engine ('none' to skip)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled decode steps (saves compile time)")
    args = ap.parse_args()

    from pillion.model.tiny import make_tiny_checkpoint
    from pillion.train.common import DEFAULT_MODEL

    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    folder = tempfile.mkdtemp()
    make_tiny_checkpoint(
        folder, "qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256
    )
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer

    eos = eos_token_ids(str(DEFAULT_MODEL), load_tokenizer(str(DEFAULT_MODEL)))
    prompts = [f"Question {i}: what is {i * 37 % 100} + {i * 11 % 50}?" + " think" * (i % 5) for i in range(64)]
    arith = [f"Q: What is {i * 37 % 90 + 10}+{i * 13 % 89 + 10}?\nA:" for i in range(args.batch)]
    if args.workload in ("fixed", "all"):
        print(f"fixed length ({args.batch} rows x {args.new} tokens, random tiny model, EOS ignored):")
        bench("fixed", folder, prompts[: args.batch], args.new, [], args.repeats, args)
    if args.workload in ("arith", "all"):
        print(f"arithmetic rollouts ({args.batch} rows, shipped tiny-arith model, EOS honoured):")
        bench("arith", str(DEFAULT_MODEL), arith, args.new, eos, args.repeats, args)
    if args.workload in ("groups", "all"):
        print(f"GRPO-style groups ({args.batch // 8} arithmetic prompts x 8 samples, EOS honoured; transformers: "
              "num_return_sequences=8):")
        bench("groups", str(DEFAULT_MODEL), arith[: args.batch // 8], args.new, eos, args.repeats, args, n=8)
    if args.workload in ("longtail", "all"):
        new = max(args.new, 256)
        print(f"long tail (64 prompts x {args.samples} samples, stop probability ~1/40 per token, up to {new} tokens, "
              f"{args.slots} rows at once):")
        bench("longtail", folder, prompts, new, list(range(8)), max(1, args.repeats // 4), args, n=args.samples,
              slots=args.slots)


if __name__ == "__main__":
    main()
