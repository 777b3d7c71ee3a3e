"""Supervised warm-up on worked solutions: cross-entropy on response tokens only.

    pillion sft data.sources='{gsm8k: data/gsm8k_train.jsonl}' model=DIR steps=2000
    pillion sft init=tiny steps=600 out=runs/sft-tiny      # a fresh tiny model on arithmetic

Each example is [prompt (rendered with data.template) | solution + EOS]; the loss is the mean
negative log-likelihood over the solution tokens of the batch (token mean), so the prompt is
context only. Published GRPO studies found that a light warm-up on long chain-of-thought
decides how far RL can go; this is that step. The final model is written as a Hugging Face
folder to OUT/final, and held-out pass@1 is measured before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pillion import config as config_lib
from pillion.algorithms.losses import aggregate
from pillion.data.mixture import Mixture
from pillion.data.templates import render_prompt
from pillion.eval.evaluate import evaluate
from pillion.model.checkpoint import eos_token_ids, load_tokenizer, save_model
from pillion.model.sequences import pack, response_logprobs
from pillion.rollout.engine import Engine
from pillion.train import common, precision
from pillion.train.models import compute_dtype, load_trainable


def examples(problems, tokenizer, template: str, eos_id: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + EOS) per problem; problems without a solution are an error."""
    out = []
    for p in problems:
        if not p.solution:
            raise ValueError(f"SFT needs worked solutions: problem {p.id} has none")
        prompt = tokenizer.encode(render_prompt(p, template, tokenizer), add_special_tokens=False)
        out.append((prompt, tokenizer.encode(p.solution, add_special_tokens=False) + [eos_id]))
    return out


def initial_model(cfg: config_lib.SFTConfig, run_dir: Path) -> Path:
    if cfg.init == "tiny":
        from pillion.model.tiny import make_tiny_checkpoint

        t = cfg.tiny
        return make_tiny_checkpoint(run_dir / "init", t.family, hidden_size=t.hidden_size, num_layers=t.num_layers,
                                    num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                                    intermediate_size=t.intermediate_size, tie_word_embeddings=t.tie_word_embeddings,
                                    seed=cfg.seed)
    if cfg.init != "none":
        raise ValueError(f"config key 'init': {cfg.init!r} (none, tiny)")
    return common.resolve_model(cfg.model)


def sft(cfg: config_lib.SFTConfig) -> dict:
    run_dir = Path(cfg.out) if cfg.out else common.default_run_dir("sft")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
    common.seed_everything(cfg.seed)
    device = common.resolve_device(cfg.device)
    model_dir = initial_model(cfg, run_dir)
    # dtype=bfloat16: bf16 compute over float32 master weights, the optimizer's (train/precision.py).
    model, params, master = load_trainable(model_dir, compute_dtype(cfg.dtype), device)
    tokenizer = load_tokenizer(model_dir)
    eos = eos_token_ids(model_dir, tokenizer)[0]
    engine = Engine(model, tokenizer, eos_token_ids(model_dir, tokenizer))

    pools, heldout = common.load_data(cfg.data, cfg.seed)
    mixture = Mixture(pools, weights=cfg.data.weights, seed=cfg.seed)
    optimizer = common.make_optimizer(params, cfg.lr, cfg.weight_decay)
    precision.sync_after_step(optimizer, master)
    metrics = common.MetricsLog(run_dir)

    bar = common.progress(cfg.steps, 0, "sft")
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * common.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
        pairs = examples(mixture.sample(cfg.batch_size), tokenizer, cfg.data.template, eos)
        batch = pack([p for p, _ in pairs], [r for _, r in pairs], engine.pad_id, device)
        logp, _ = response_logprobs(model, batch)  # [B, T]
        loss = aggregate(-logp, batch.response_mask, "token_mean")  # mean NLL per solution token
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if torch.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "loss": float(loss), "grad_norm": float(norm),
                  "lr": optimizer.param_groups[0]["lr"], "step_time": time.perf_counter() - t0}
        metrics.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update(1)
    bar.close()

    model.eval()
    result = evaluate(engine, heldout, cfg.eval, cfg.data.template, progress=False)
    final = run_dir / "final"
    save_model(model, final, source=model_dir)
    report = {"final_loss": record["loss"] if cfg.steps else None, "pass@1": result["pass@1"],
              "n_heldout": len(heldout), "model": str(final)}
    (run_dir / "report.json").write_text(json.dumps({**report, "eval": result}, indent=2))
    print(f"sft: final loss {report['final_loss']}, held-out pass@1 {result['pass@1']:.3f}; model: {final}")
    return report
