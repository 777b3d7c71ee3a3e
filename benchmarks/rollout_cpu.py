"""pillion's generation engine against `transformers` `generate`, side by side, on CPU.

    python benchmarks/rollout_cpu.py [--batch 32] [--new 128] [--repeats 20] [--workload all] [--no-compile]

Three workloads, each timed for both engines in the same run, same prompts, same sampling
(temperature 1.0, top-p 1.0, top-k off), best of `--repeats` after a warm-up, the engines
interleaved within each repeat:

  fixed   a tiny random checkpoint (hidden 64, 2 layers, built here) with EOS ignored, so both
          produce exactly batch x new tokens: the per-token cost of the decode loop;
  arith   the shipped tiny arithmetic model on arithmetic prompts with EOS honoured, as in an
          RL rollout: samples finish at different lengths;
  groups  the same model with batch/8 prompts x 8 samples each, as GRPO samples a group per
          prompt (pillion prefills each prompt once; transformers uses num_return_sequences).

transformers runs twice: plain `generate` (tokens only) and `generate` returning the per-token
log-probabilities an RL rollout needs (`output_scores` + `compute_transition_scores`, which with
temperature 1 and no top-k/top-p are log_softmax of the logits: what pillion returns).
pillion runs twice: with its eager decode step and with the decode step compiled
(`compiled_decode_step`, compile time excluded: it is paid once per run). Prints tokens/s of
each and the ratios to transformers. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import tempfile

# One in-process compile thread: inductor's background worker pool would otherwise compete with
# the timed runs on a 2-core machine.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
import time

import torch


def count_hf_tokens(out: torch.Tensor, prompt_len: int, eos: int | None) -> int:
    """Generated tokens per row up to and including the first EOS (the rest is padding)."""
    total = 0
    for row in out[:, prompt_len:].tolist():
        total += row.index(eos) + 1 if eos is not None and eos in row else len(row)
    return total


def bench(name, folder, prompts, new_tokens, honour_eos, repeats, compile_too=True, n=1):
    """Time both engines on `prompts` with `n` samples each (batch = len(prompts) * n)."""
    from transformers import AutoModelForCausalLM

    from pillion.model.checkpoint import eos_token_ids, load_model, load_tokenizer
    from pillion.rollout.engine import Engine, SamplingParams, compiled_decode_step

    tokenizer = load_tokenizer(folder)
    eos_ids = eos_token_ids(folder, tokenizer) if honour_eos else []
    engine = Engine(load_model(folder).eval(), tokenizer, eos_ids)
    compiled = None  # built at its own warm-up, after the other engines have warmed up
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, seed=0)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    hf_eos = tokenizer.eos_token_id if honour_eos else None

    def run_pillion() -> int:
        return sum(len(c.ids) for c in engine.generate(prompts, params))

    def run_pillion_compiled() -> int:
        nonlocal compiled
        if compiled is None:
            compiled = Engine(load_model(folder).eval(), tokenizer, eos_ids, decode_fn=compiled_decode_step())
        return sum(len(c.ids) for c in compiled.generate(prompts, params))

    def hf_generate(with_logprobs: bool):
        with torch.inference_mode():
            out = hf.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                              min_new_tokens=1 if honour_eos else new_tokens, eos_token_id=hf_eos,
                              pad_token_id=tokenizer.pad_token_id, num_return_sequences=n, output_scores=with_logprobs,
                              return_dict_in_generate=with_logprobs)
            if not with_logprobs:
                return count_hf_tokens(out, enc.input_ids.shape[1], hf_eos)
            hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            return count_hf_tokens(out.sequences, enc.input_ids.shape[1], hf_eos)

    def run_transformers() -> int:
        return hf_generate(False)

    def run_transformers_logprobs() -> int:
        return hf_generate(True)

    runs = {"pillion": run_pillion, "transformers": run_transformers, "transformers+logp": run_transformers_logprobs}
    if compile_too:
        runs["pillion+compile"] = run_pillion_compiled
    for fn in runs.values():
        fn()  # warm-up (and the compile)
    # Interleaved: every repeat times each engine once, so a slow moment of the machine hits
    # all of them rather than one; the best time of each is kept.
    best, tokens = {label: float("inf") for label in runs}, {}
    for _ in range(repeats):
        for label, fn in runs.items():
            start = time.perf_counter()
            tokens[label] = fn()
            best[label] = min(best[label], time.perf_counter() - start)
    rates = {label: tokens[label] / best[label] for label in runs}
    for label in runs:
        print(f"  {label:<17} {tokens[label]:6d} tokens in {best[label]:.3f} s -> {rates[label]:9,.0f} tokens/s")
    for ref in ("transformers", "transformers+logp"):
        line = f"  {name}: pillion / {ref} = {rates['pillion'] / rates[ref]:.2f}x eager"
        if compile_too:
            line += f", {rates['pillion+compile'] / rates[ref]:.2f}x with the compiled decode step"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=128, help="max new tokens per sequence")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workload", choices=("fixed", "arith", "groups", "all"), default="all")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled decode step (saves its compile time)")
    args = ap.parse_args()

    from pillion.model.tiny import make_tiny_checkpoint
    from pillion.train.common import DEFAULT_MODEL

    print(f"batch {args.batch}, up to {args.new} new tokens, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    folder = tempfile.mkdtemp()
    make_tiny_checkpoint(
        folder, "qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256
    )
    prompts = [f"Question {i}: what is {i * 37 % 100} + {i * 11 % 50}?" + " think" * (i % 5) for i in range(args.batch)]
    if args.workload in ("fixed", "all"):
        print("fixed length (random tiny model, EOS ignored):")
        bench("fixed", folder, prompts, args.new, False, args.repeats, not args.no_compile)
    arith = [f"Q: What is {i * 37 % 90 + 10}+{i * 13 % 89 + 10}?\nA:" for i in range(args.batch)]
    if args.workload in ("arith", "all"):
        print("arithmetic rollouts (shipped tiny-arith model, EOS honoured):")
        bench("arith", str(DEFAULT_MODEL), arith, args.new, True, args.repeats, not args.no_compile)
    if args.workload in ("groups", "all"):
        print(f"GRPO-style groups ({args.batch // 8} arithmetic prompts x 8 samples, EOS honoured; transformers: "
              "num_return_sequences=8):")
        bench(
            "groups",
            str(DEFAULT_MODEL),
            arith[: args.batch // 8],
            args.new,
            True,
            args.repeats,
            not args.no_compile,
            n=8,
        )


if __name__ == "__main__":
    main()
