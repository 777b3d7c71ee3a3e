"""pillion's rollout engine against `transformers` `generate` on one CUDA GPU, side by side.

    python benchmarks/rollout_gpu.py                 # meant to take < 5 minutes on one H100 (mostly compiling)
    python benchmarks/rollout_gpu.py --only pillion  # pillion's three variants alone
    python benchmarks/rollout_gpu.py --smoke         # the same code on CPU, a tiny model (a test runs this)
    python benchmarks/rollout_gpu.py --engines "pillion cuda-graphs,transformers dynamic" --json rollout.json

The model has the Qwen2.5-1.5B shape (hidden 1536, 28 layers, 12 heads, 2 KV heads,
intermediate 8960, vocab 151,936, tied embeddings), random-initialised in memory in bf16
(nothing is downloaded) and loaded into both libraries. Workload: 64 prompts of 32 random
tokens, 512 sampled tokens each (temperature 1, no top-k/top-p, EOS ignored so every row runs
to the end). Each engine runs once to warm up (compiling where it compiles), then once timed;
printed: tokens/s, seconds, peak GPU memory above the weights, and each engine's ratio to
transformers' plain `generate`. Engines:

  pillion eager          `Engine` with its eager decode step (static shapes, race sampler);
  pillion compiled       the decode step under torch.compile (no CUDA graphs);
  pillion cuda-graphs    compiled with mode="reduce-overhead": one CUDA graph replayed per step;
  transformers dynamic   `generate` with its default dynamic cache;
  transformers static    `generate(cache_implementation="static")`, which transformers compiles
                         itself (torch.compile, mode="reduce-overhead") on CUDA.

pillion also returns every token's log-probability; transformers here returns tokens only.
Without CUDA the benchmark prints why and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

QWEN25_15B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                  intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
                  max_position_embeddings=32768, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=1024, tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=2048,
            rms_norm_eps=1e-6)
ENGINES = ("pillion eager", "pillion compiled", "pillion cuda-graphs", "transformers dynamic", "transformers static")


class IdsTokenizer:
    """All the engine needs of a tokenizer when prompts are token ids and text is not wanted."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


def build_models(shape: dict, device: str, dtype: torch.dtype):
    """(transformers Qwen2 model, pillion Transformer) with the same random weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pillion.model.hf_config import config_from_hf, hf_layout
    from pillion.model.transformer import Transformer

    hf_config = Qwen2Config(architectures=["Qwen2ForCausalLM"], **shape)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds instead of minutes on CPU
        hf = Qwen2ForCausalLM(hf_config).to(dtype).eval()
    cfg = config_from_hf(hf_config.to_dict())
    with torch.device("meta"):
        model = Transformer(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: torch.empty(s, dtype=dtype, device=device) for k, s in shapes.items() if k != "lm_head.weight"}
    hf_state = hf.state_dict()
    for hf_key, (key, rows, _) in hf_layout(cfg, shapes).items():
        if hf_key != "lm_head.weight":
            state[key][rows].copy_(hf_state[hf_key])  # fused projections filled part by part
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    model.reset_rope(device)
    return hf, model.eval()


def timed(run, prompts, new_tokens: int, device: str):
    """(run(prompts, new_tokens), seconds, peak bytes allocated meanwhile)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run(prompts, new_tokens)
    if device == "cuda":
        torch.cuda.synchronize()
        return result, time.perf_counter() - start, torch.cuda.max_memory_allocated()
    return result, time.perf_counter() - start, 0


def pillion_runner(model, variant: str):
    from pillion.rollout.engine import Engine, SamplingParams
    from pillion.rollout.step import compiled_decode_step

    decode_fn = {"pillion eager": None, "pillion compiled": compiled_decode_step(),
                 "pillion cuda-graphs": compiled_decode_step("reduce-overhead")}[variant]
    kwargs = {} if decode_fn is None else {"decode_fn": decode_fn}
    engine = Engine(model, IdsTokenizer(), [], **kwargs)  # no EOS: every row samples new_tokens

    def run(prompts, new_tokens):
        params = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, seed=0)
        return sum(len(c.ids) for c in engine.generate(prompts, params))

    return run


def transformers_runner(hf, variant: str):
    extra = {"cache_implementation": "static"} if variant == "transformers static" else {}

    def run(prompts, new_tokens):
        ids = torch.tensor(prompts, device=hf.device)
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=0, **extra)
        return (out.shape[1] - ids.shape[1]) * out.shape[0]

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=512, help="sampled tokens per prompt")
    ap.add_argument("--only", choices=("all", "pillion", "transformers"), default="all")
    ap.add_argument("--engines", help=f"comma-separated among: {', '.join(ENGINES)} (default: as --only says)")
    ap.add_argument("--json", help="also write {engine: tokens/s} and the seconds to this JSON file")
    ap.add_argument("--smoke", action="store_true",
                    help="on CPU: a tiny model, 4 prompts x 8 tokens, eager and uncompiled engines only")
    args = ap.parse_args(argv)
    if args.smoke:
        device, dtype, shape = "cpu", torch.float32, TINY
        args.prompts, args.new = 4, 8
        engines = ("pillion eager", "transformers dynamic", "transformers static")
    elif not torch.cuda.is_available():
        print("rollout_gpu: skipped, no CUDA device (run with --smoke to exercise the script on CPU)")
        return 0
    else:
        device, dtype, shape = "cuda", torch.bfloat16, QWEN25_15B
        engines = [e for e in ENGINES if args.only == "all" or e.startswith(args.only)]
        if args.engines:
            engines = args.engines.split(",")
            unknown = [e for e in engines if e not in ENGINES]
            if unknown:
                ap.error(f"unknown engine(s) {unknown}; choose among {', '.join(ENGINES)}")

    wall = time.perf_counter()
    hf, model = build_models(shape, device, dtype)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, shape["vocab_size"], (args.prompts, args.prompt_len), generator=g).tolist()
    name = "Qwen2.5-1.5B shape" if shape is QWEN25_15B else "tiny smoke model"
    print(f"{name}, {dtype}, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}: "
          f"{args.prompts} prompts x {args.new} sampled tokens; model built in {time.perf_counter() - wall:.0f} s")
    rates = {}
    for engine in engines:
        # The previous engine's cache and graphs are released first, so that each peak is its own.
        run = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated() if device == "cuda" else 0
        run = pillion_runner(model, engine) if engine.startswith("pillion") else transformers_runner(hf, engine)
        # Warm-up: at full length where it compiles (and records CUDA graphs for the shapes timed
        # next), a few tokens where nothing is compiled.
        compiles = engine in ("pillion compiled", "pillion cuda-graphs", "transformers static")
        _, warm_seconds, _ = timed(run, prompts, args.new if compiles else min(args.new, 8), device)
        tokens, seconds, peak = timed(run, prompts, args.new, device)
        if tokens != args.prompts * args.new:
            raise RuntimeError(f"{engine}: {tokens} tokens, expected {args.prompts * args.new}")
        rates[engine] = tokens / seconds
        memory = f", peak {(peak - before) / 2**30:5.2f} GiB above the weights" if device == "cuda" else ""
        print(f"  {engine:<21} {rates[engine]:9,.0f} tokens/s  ({seconds:6.2f} s; warm-up {warm_seconds:6.1f} s"
              f"{memory})", flush=True)
    if "transformers dynamic" in rates:
        base = rates["transformers dynamic"]
        print("  vs transformers dynamic: " + ", ".join(f"{e} {r / base:.2f}x" for e, r in rates.items()))
    print(f"total {time.perf_counter() - wall:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens_per_s": rates, "prompts": args.prompts, "new_tokens": args.new,
                       "seconds": time.perf_counter() - wall}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
