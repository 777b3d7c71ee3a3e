"""`pillion logprob-check`: prove that rollout, trainer and transformers agree on log-probs.

    pillion logprob-check --model DIR [--dtype bfloat16 --device cuda] [--json]

Samples completions with pillion's engine, then recomputes the log-probabilities of exactly
those tokens with (a) pillion's training forward (`response_logprobs`, the path the trainer
uses for old and new log-probs) and (b) a `transformers` forward of the same checkpoint. For
each pair it reports the multiplicative token probability error of docs/algorithms.md §13.1,
mean over tokens of exp(|logp_a - logp_b|) (1.0 = exact), the worst per-rollout mean, and the
largest single-token |logp_a - logp_b|. Exit status 1 when any pair's metric exceeds
`--threshold` (default 1.05, NeMo-RL's bar for equal precision).

With `--tools N` the engine runs up to N Python tool calls per sample (rollout/tools.py): rows
are then multi-turn, and only sampled tokens are compared (tool output has no engine log-prob),
while every log-prob is computed with the tool output in the context.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from pillion.fields import option

DEFAULT_PROMPTS = [
    "What is 12 + 35?",
    "Compute 7 * 8 and explain.",
    "Solve for x: 2x + 3 = 11.",
    "The sum of two numbers is 20 and their difference is 4. Find them.",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder (config.json, *.safetensors, tokenizer), a run folder, a Hub id "
                        "org/name[@revision], or 'default'")
    p.add_argument("--prompts", help="text file, one prompt per line (default: four built-in math prompts)")
    p.add_argument("--n", type=option(low=1), default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=option(low=1), default=64)
    p.add_argument("--temperature", type=option(low=0, open="low", kind=float), default=1.0,
                   help="sampling temperature (> 0); log-probs use the same scaling")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=option(low=0, open="low", kind=float), default=1.05,
                   help="fail above this metric (the metric is >= 1; default 1.05)")
    p.add_argument("--tools", type=option(low=0), default=0, help="Python tool calls per sample (default 0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def compare(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Metric, worst per-rollout metric and max |a - b| over masked tokens of [B, T] log-probs."""
    from pillion.algorithms.losses import token_mult_prob_error

    m = mask.bool()
    diff = torch.where(m, (a.double() - b.double()).abs(), torch.zeros((), dtype=torch.float64))
    per_row = torch.where(m, diff.exp(), torch.zeros((), dtype=torch.float64)).sum(-1) / m.sum(-1).clamp(min=1)
    return {
        "metric": float(token_mult_prob_error(a, b, mask)),
        "worst_rollout": float(per_row.max()) if len(per_row) else 1.0,
        "max_abs_error": float(diff.max()) if diff.numel() else 0.0,
    }


def transformers_logprobs(model_dir: str, batch, temperature: float, dtype: torch.dtype, device) -> torch.Tensor:
    """[B, T] log-probs of the batch's responses under `transformers.AutoModelForCausalLM`."""
    from transformers import AutoModelForCausalLM

    from pillion.model.transformer import padding_positions

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    with torch.inference_mode():
        # Left padding: positions must count real tokens only, as in pillion's layout.
        logits = hf(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=padding_positions(batch.attention_mask),
        ).logits.float()
    P = batch.prompt_len
    logp = torch.log_softmax(logits[:, P - 1 : -1] / temperature, dim=-1)  # [B, T, V]
    targets = batch.input_ids[:, P:]
    out = logp.gather(-1, targets[..., None]).squeeze(-1)
    return torch.where(batch.response_mask.bool(), out, torch.zeros_like(out))


def check(model_dir: str, prompts: list[str], n: int, max_new_tokens: int, temperature: float,
          dtype: str, device: str, seed: int, tools=None) -> dict:
    from pillion.model.checkpoint import DTYPES, load_model
    from pillion.model.sequences import pack, response_logprobs
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rollout.engine import Engine, SamplingParams

    torch_dtype = DTYPES[dtype]
    model = load_model(model_dir, dtype=torch_dtype, device=device).eval()
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(model, tokenizer, eos_token_ids(model_dir, tokenizer), tools=tools)
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    completions = engine.generate(prompts, params)
    batch = pack([c.prompt_ids for c in completions], [c.ids for c in completions], engine.pad_id, device)
    engine_lp = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=device)
    for i, c in enumerate(completions):
        engine_lp[i, : len(c.ids)] = c.logprobs.to(device)
    with torch.inference_mode():
        trainer_lp, _ = response_logprobs(model, batch, temperature)
    hf_lp = transformers_logprobs(model_dir, batch, temperature, torch_dtype, device)
    mask = batch.response_mask.clone()  # [B, T], sampled tokens only
    for i, c in enumerate(completions):
        if c.sampled is not None:
            mask[i, : len(c.ids)] *= c.sampled.to(mask.device)
    return {
        "engine_vs_trainer": compare(engine_lp, trainer_lp, mask),
        "engine_vs_transformers": compare(engine_lp, hf_lp, mask),
        "trainer_vs_transformers": compare(trainer_lp, hf_lp, mask),
        "tokens": int(mask.sum()),
        "tool_calls": sum(c.tool_calls for c in completions),
        "tool_tokens": int(batch.response_mask.sum() - mask.sum()),
        "rollouts": len(completions),
        "dtype": dtype,
        "device": str(device),
        "temperature": temperature,
    }


def run(args) -> int:
    from pillion.errors import UserError
    from pillion.model import adapters
    from pillion.model.checkpoint import resolve_model
    from pillion.rollout.tools import Tools
    from pillion.train.common import resolve_device

    device = str(resolve_device(args.device, "--device"))  # one that is not there: one line, before loading
    prompts = DEFAULT_PROMPTS
    if args.prompts:
        with open(args.prompts, encoding="utf-8", errors="replace") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            raise UserError(f"--prompts {args.prompts}: no prompt in the file (one per line)")
    folder = resolve_model(args.model)
    if adapters.is_adapter_folder(folder):  # transformers would need peft to read it
        raise UserError(f"{folder} is a LoRA adapter folder; write full weights first with `pillion export "
                        f"{folder} OUT --merge`, then check OUT")
    report = check(
        str(folder),
        prompts,
        args.n,
        args.max_new_tokens,
        args.temperature,
        args.dtype,
        device,
        args.seed,
        Tools(max_calls=args.tools) if args.tools else None,
    )
    pairs = ["engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"]
    failed = [p for p in pairs if report[p]["metric"] > args.threshold]
    report["threshold"] = args.threshold
    report["passed"] = not failed
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['rollouts']} rollouts, {report['tokens']} tokens, {args.dtype} on {report['device']}, "
              f"temperature {args.temperature}")
        print(f"{'pair':<26}{'mean exp|dlogp|':>17}{'worst rollout':>15}{'max |dlogp|':>13}")
        for p in pairs:
            r = report[p]
            print(f"{p:<26}{r['metric']:>17.6f}{r['worst_rollout']:>15.6f}{r['max_abs_error']:>13.2e}")
        print("PASS" if not failed else f"FAIL: {', '.join(failed)} above {args.threshold}")
    if failed:
        print(f"logprob-check: {', '.join(failed)} above threshold {args.threshold}", file=sys.stderr)
    return 1 if failed else 0
