"""The policy (and critic) update over one rollout batch: ppo_epochs x mini_batches optimizer
steps, micro-batched, with loss normalisers counted over the whole mini-batch (and over ranks)
so that the result does not depend on the micro-batch size (docs/algorithms.md §5).
"""

from __future__ import annotations

import torch

from pillion.algorithms import losses as L
from pillion.model.sequences import response_logprobs
from pillion.train import parallel
from pillion.train.batch import TrainBatch
from pillion.train.models import optimizer_params
from pillion.train.objective import Counts, actor_loss


def chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@torch.no_grad()
def no_grad_pass(fn, batch: TrainBatch, rows_per_pass: int) -> torch.Tensor:
    """fn(micro-batch) -> [b, T], over the whole batch without grad: old/reference log-probs, values."""
    return torch.cat([fn(batch.rows(r)) for r in chunks(torch.arange(batch.num_rows), rows_per_pass)])


def optimizer_step(params, optimizer, grad_clip) -> tuple[float, bool]:
    """Clip and step; skip (and clear) the update when the gradient is not finite."""
    norm = parallel.clip_grad_norm(params, grad_clip)  # FSDP2: the norm over every rank's shards
    ok = bool(torch.isfinite(norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm), ok


def update(policy, optimizer, critic, critic_opt, cfg, batch: TrainBatch, world, train_policy=True) -> dict:
    """ppo_epochs x mini_batches optimizer steps over the rollout batch; returns the step's stats,
    including how closely the engine's log-probs match the trainer's (first pass over each row)."""
    stats: dict[str, list[float]] = {}
    sums = {"tokens": 0.0, "logprob_error": 0.0, "kl": 0.0}  # token-weighted, first epoch
    skipped = 0
    for epoch in range(cfg.ppo_epochs):
        for mb in chunks(torch.arange(batch.num_rows), -(-batch.num_rows // cfg.mini_batches)):
            counts = Counts.of(batch.loss_mask[mb], batch.correct[mb], cfg.loss.agg,
                               cfg.loss.norm_len or cfg.max_new_tokens)
            counts.num_tokens = parallel.sum_int(counts.num_tokens, world)
            counts.num_seqs = parallel.sum_int(counts.num_seqs, world)
            counts.num_positive_tokens = parallel.sum_int(counts.num_positive_tokens, world)
            for micro in chunks(mb, cfg.micro_batch):
                sub = batch.rows(micro)
                if train_policy:
                    logp, entropy = response_logprobs(policy, sub.seqs, cfg.temperature, with_entropy=True)  # [b, T]
                    # On-policy (one update per rollout) the first forward is pi_old: ratio exactly 1.
                    old = sub.old_logprobs if sub.old_logprobs is not None else logp.detach()
                    if epoch == 0:  # the rollout policy as the trainer sees it, against the engine's
                        n = float(sub.response_mask.sum())
                        sums["tokens"] += n
                        sums["logprob_error"] += n * L.token_mult_prob_error(sub.engine_logprobs, old,
                                                                             sub.response_mask)
                        if sub.ref_logprobs is not None:
                            kl = L.kl(old, sub.ref_logprobs, "k3", sub.response_mask)  # [b, T]
                            sums["kl"] += float(L.aggregate(kl, sub.response_mask, "token_mean")) * n
                    loss, st = actor_loss(cfg, logp, old, sub, counts, entropy)
                    loss.backward()
                    st["entropy"] = float(L.aggregate(entropy.detach(), sub.loss_mask, "token_mean"))
                    for k, v in st.items():
                        stats.setdefault(k, []).append(v)
                if critic is not None:
                    values = critic.values(sub.seqs)  # [b, T]
                    vloss, vst = L.value_loss(values, sub.values, sub.returns, sub.loss_mask, cfg.ppo.value_clip,
                                              "token_mean", num_tokens=counts.num_tokens)
                    (cfg.ppo.vf_coef * vloss).backward()
                    stats.setdefault("value_loss", []).append(float(vloss.detach()))
                    stats.setdefault("vf_clipfrac", []).append(float(vst["vf_clipfrac"]))
            if train_policy:
                norm, ok = optimizer_step(optimizer_params(optimizer), optimizer, cfg.grad_clip)
                stats.setdefault("grad_norm", []).append(norm)
                skipped += not ok
            if critic is not None:
                _, ok = optimizer_step(optimizer_params(critic_opt), critic_opt, cfg.grad_clip)
                skipped += not ok
    sums = parallel.sum_floats(sums, world)  # token-weighted over every rank's rows
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["skipped_updates"] = skipped
    out["logprob_error"] = sums["logprob_error"] / sums["tokens"] if sums["tokens"] else 1.0
    if batch.ref_logprobs is not None and sums["tokens"]:
        out["kl"] = sums["kl"] / sums["tokens"]
    return out
