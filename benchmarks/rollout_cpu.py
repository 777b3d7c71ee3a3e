"""pillion's generation engine against `transformers` `generate`, side by side, on CPU.

    python benchmarks/rollout_cpu.py [--batch 32] [--new 128] [--hidden 256] [--layers 4]

Both generate from the same tiny random checkpoint (built here, nothing downloaded), the same
batch of prompts of different lengths, with the same sampling (temperature 1.0, top-p 1.0,
top-k off) and EOS ignored so both produce exactly batch x new tokens. Prints tokens/s of each
and the ratio. Timings are the best of `--repeats` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--family", default="qwen2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from pillion.model.checkpoint import load_model, load_tokenizer
    from pillion.model.tiny import make_tiny_checkpoint
    from pillion.rollout.engine import Engine, SamplingParams

    folder = tempfile.mkdtemp()
    make_tiny_checkpoint(folder, args.family, hidden_size=args.hidden, num_layers=args.layers,
                         num_heads=4, num_kv_heads=2, intermediate_size=4 * args.hidden)
    tokenizer = load_tokenizer(folder)
    prompts = [f"Question {i}: what is {i * 37 % 100} + {i * 11 % 50}?" + " think" * (i % 5) for i in range(args.batch)]

    # EOS ignored (no eos ids) so both sides produce exactly batch x new tokens.
    engine = Engine(load_model(folder).eval(), tokenizer, eos_ids=[])
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new, seed=0)

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    def run_pillion() -> int:
        out = engine.generate(prompts, params)
        return sum(len(c.ids) for c in out)

    def run_transformers() -> int:
        with torch.inference_mode():
            out = hf.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=args.new, min_new_tokens=args.new,
                              pad_token_id=tokenizer.pad_token_id)
        return int((out.shape[1] - enc.input_ids.shape[1]) * out.shape[0])

    results = {}
    for name, fn in (("pillion", run_pillion), ("transformers", run_transformers)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            tokens = fn()
            best = min(best, time.perf_counter() - start)
        results[name] = tokens / best
        print(f"{name:<13} {tokens} tokens in {best:.3f} s  ->  {tokens / best:,.0f} tokens/s")
    print(f"ratio pillion / transformers: {results['pillion'] / results['transformers']:.2f}x "
          f"(batch {args.batch}, {args.new} new tokens, hidden {args.hidden}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
