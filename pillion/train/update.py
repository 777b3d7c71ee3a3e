"""The policy (and critic) update over one rollout batch: ppo_epochs x mini_batches optimizer
steps, micro-batched, with loss normalisers counted over the whole mini-batch (and over ranks)
so that the result does not depend on the micro-batch split (docs/algorithms.md §5).

    logprob_pass(models, cfg, batch, need_old, world)        # step 3: old, reference, values; no grad
    stats = update(models, optimizers, cfg, batch, world)     # step 5

Every forward is packed (model/sequences.py): a micro-batch's rows run end to end without
padding, through the one `PackedLayout` that all of its forwards read, and micro-batches hold a
row count or, with `micro_batch_tokens`, a token budget (schedule.py), so long and short rows
share forwards of even cost. The no-grad pass computes the old log-probs, the reference's and
the critic's values over the same micro-batches, one after another per micro-batch, before the
update; with one mini-batch per step the update runs over those same micro-batches and layouts.
The losses and the checks of the rollout's log-probs are objective.py's; this module runs them.
Both functions return their wall seconds for the step-time breakdown (`step_times`).
"""

from __future__ import annotations

import time

import torch

from pillion import ranks
from pillion.model.sequences import packed_logprobs
from pillion.train import parallel, schedule
from pillion.train import stats as stats_lib
from pillion.train.batch import TrainBatch
from pillion.train.models import Models, Optimizers, optimizer_params, reference_fn
from pillion.train.objective import Counts, actor_loss, critic_loss, grad_free_rows, rollout_checks

# Wall-clock fields of a step's metrics record: the only ones that differ between two runs of
# the same config and seed (resume, fault and multi-rank tests compare all the others).
TIMING_FIELDS = frozenset({"tokens_per_s", "step_time", "time_generate", "time_grade", "time_logprobs",
                           "time_update", "time_other"})


# Logged losses that each micro-batch holds a share of (normalised by the mini-batch's global counts):
# summed over micro-batches and ranks into the optimizer step's loss, then averaged over steps.
# Every other statistic is a token mean, a minimum or a maximum, reduced by stats.Tally.
PARTS = ("pg_loss", "kl_loss", "nll_loss", "value_loss")


def seconds_since(start: float, device) -> float:
    """Wall seconds since `start`, after the device's queued work (CUDA is asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def logprob_pass(models: Models, cfg, batch: TrainBatch, need_old: bool, world=None) -> float:
    """Fill batch.old_logprobs (when `need_old`: several updates per rollout, or TIS), the
    reference's log-probs (a KL term) and the critic's values, in one no-grad pass over the
    micro-batches; returns its wall seconds."""
    start = time.perf_counter()
    device = batch.response_mask.device
    reference = reference_fn(models, device, cfg.temperature)  # None without a reference
    fns = {"old_logprobs": (lambda layout: packed_logprobs(models.policy, layout, cfg.temperature)[0])
           if need_old else None,
           "ref_logprobs": reference,
           "values": models.critic.packed_values if models.critic is not None else None}
    fns = {k: fn for k, fn in fns.items() if fn is not None}
    if fns:
        parts = schedule.of(batch, cfg, world).micro_batches(torch.arange(batch.num_rows))
        order = torch.argsort(torch.cat([micro.rows for micro in parts]))  # micro-batch order -> row order
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in fns}
        for micro in parts:
            for k, fn in fns.items():
                outs[k].append(fn(micro.layout))  # [b, T]
        for k, parts_k in outs.items():
            setattr(batch, k, torch.cat(parts_k)[order])  # [B, T]
    return seconds_since(start, device)


def optimizer_step(params, optimizer, grad_clip) -> tuple[float, bool]:
    """Clip and step; skip (and clear) the update when the gradient is not finite."""
    norm = parallel.clip_grad_norm(params, grad_clip)  # FSDP2: the norm over every rank's shards
    ok = bool(torch.isfinite(norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm), ok


def update(models: Models, optimizers: Optimizers, cfg, batch: TrainBatch, world, train_policy: bool = True) -> dict:
    """ppo_epochs x mini_batches optimizer steps over the rollout batch (train_policy=False: the
    critic's alone, VAPO's value pretraining); returns the step's stats, including how closely the
    engine's log-probs match the trainer's (first pass over each row) and the update's wall
    seconds (`time_update`)."""
    start = time.perf_counter()
    plan = schedule.of(batch, cfg, world)
    stats: dict[str, list[float]] = {}  # per optimizer step: PARTS, grad_norm
    tally = stats_lib.Tally()  # the rest: token means (weighted by tokens), ratio_min / ratio_max
    sums = {"tokens": 0.0, "logprob_error": 0.0, "kl": 0.0}  # token-weighted, first epoch
    skipped = 0
    # Rows whose loss has no gradient run their forward without autograd (one process only: with
    # FSDP2 every rank must run the same forwards).
    free = grad_free_rows(cfg, batch.advantages, batch.loss_mask) if world is None or world.size == 1 else None
    for epoch in range(cfg.ppo_epochs):
        for mb in mini_batches(batch, cfg.mini_batches):
            counts = Counts.of(batch.loss_mask[mb], batch.correct[mb], cfg.loss.agg,
                               cfg.loss.norm_len or cfg.max_new_tokens, batch.real[mb])
            counts.num_tokens = ranks.sum_int(counts.num_tokens, world)
            counts.num_seqs = ranks.sum_int(counts.num_seqs, world)
            counts.num_positive_tokens = ranks.sum_int(counts.num_positive_tokens, world)
            shares: dict[str, float] = {}  # PARTS: the micro-batches' shares of this optimizer step's losses
            # With no row to backpropagate the optimizer would see no gradient instead of a zero one
            # (AdamW still moves on its moments): such a mini-batch runs as usual.
            mb_free = free if free is not None and not bool(free[mb].all()) else None
            for micro in plan.micro_batches(mb):
                sub = batch.rows(micro.rows)
                if train_policy:
                    logp, entropy = policy_logprobs(models.policy, cfg, plan, micro, mb_free)  # [b, T]
                    # On-policy (one update per rollout) the first forward is pi_old: ratio exactly 1.
                    old = sub.old_logprobs if sub.old_logprobs is not None else logp.detach()
                    if epoch == 0:  # the rollout policy as the trainer sees it, against the engine's
                        for k, v in rollout_checks(old, sub).items():
                            sums[k] += v
                    loss, st = actor_loss(cfg, logp, old, sub, counts, entropy)
                    if loss.requires_grad:  # else every row of the micro-batch is free
                        loss.backward()
                    keep_stats(st, shares, tally, float(sub.loss_mask.sum()))
                if models.critic is not None:
                    loss, st = critic_loss(cfg, models.critic.packed_values(micro.layout), sub, counts)  # [b, T] values
                    loss.backward()
                    keep_stats(st, shares, tally, float(sub.loss_mask.sum()))
            for k, v in shares.items():
                stats.setdefault(k, []).append(v)
            if train_policy:
                norm, ok = optimizer_step(optimizer_params(optimizers.policy), optimizers.policy, cfg.grad_clip)
                stats.setdefault("grad_norm", []).append(norm)
                skipped += not ok
            if models.critic is not None:
                # A replicated critic (critic.replicate): the ranks' gradients summed, as FSDP2 sums a
                # sharded one's, once per step rather than per micro-batch (a sum either way).
                parallel.sum_gradients(optimizer_params(optimizers.critic), models.critic_replicated)
                _, ok = optimizer_step(optimizer_params(optimizers.critic), optimizers.critic, cfg.grad_clip)
                skipped += not ok
    sums = ranks.sum_floats(sums, world)  # token-weighted over every rank's rows
    out = {k: sum(v) / len(v) for k, v in stats.items()}  # means over optimizer steps
    out.update(ranks.sum_floats({k: out[k] for k in PARTS if k in out}, world))  # every rank's share of the loss
    out.update(tally.result(world))  # token means over every rank's tokens, minima and maxima
    out["skipped_updates"] = skipped
    out["logprob_error"] = sums["logprob_error"] / sums["tokens"] if sums["tokens"] else 1.0
    if batch.ref_logprobs is not None and sums["tokens"]:
        out["kl"] = sums["kl"] / sums["tokens"]
    out["time_update"] = seconds_since(start, batch.response_mask.device)
    return out


def policy_logprobs(policy, cfg, plan, micro, free: torch.Tensor | None):
    """The micro-batch's [b, T] log-probs and entropies under the policy. Rows in `free` (their
    loss has no gradient: `grad_free_rows`) take a forward without autograd, which neither keeps
    activations nor runs backward; the others one with it; the two are put back in row order, so
    every logged statistic sees the same values (up to float summation order)."""
    temperature = cfg.temperature
    if free is None or not bool(free[micro.rows].any()):
        return packed_logprobs(policy, micro.layout, temperature, with_entropy=True)
    is_free = free[micro.rows]  # [b]
    parts = [micro.rows[~is_free], micro.rows[is_free]]
    outs = []
    for rows, grad in zip(parts, (True, False)):
        if len(rows):
            with torch.set_grad_enabled(grad):
                outs.append(packed_logprobs(policy, plan.layout(rows), temperature, with_entropy=True))
    order = torch.argsort(torch.cat(parts))  # (grad rows, free rows) -> the micro-batch's order
    return torch.cat([o[0] for o in outs])[order], torch.cat([o[1] for o in outs])[order]


def mini_batches(batch: TrainBatch, count: int) -> list[torch.Tensor]:
    """Row indices of each mini-batch: the row counts `parallel.balance_groups` laid out (whole
    groups in the step's order; with several ranks each rank's share of every global mini-batch,
    so ranks step together on the same global rows), or for a batch made without them `count`
    chunks of rows."""
    rows = torch.arange(batch.num_rows)
    sizes = batch.mini_batch_rows or [batch.num_rows]
    if batch.mini_batch_rows is None and count > 1:
        size = -(-batch.num_rows // count)
        sizes = [min(size, batch.num_rows - i) for i in range(0, batch.num_rows, size)]
    return list(torch.split(rows, sizes))


def keep_stats(step_stats: dict[str, float], shares: dict[str, float], tally: stats_lib.Tally, tokens: float) -> None:
    """A micro-batch's stats: its shares of the optimizer step's losses (PARTS) summed, the rest
    (token means over its `tokens` loss tokens, minima, maxima) into the step's tally."""
    tally.add({k: v for k, v in step_stats.items() if k not in PARTS}, tokens)
    for k in PARTS:
        if k in step_stats:
            shares[k] = shares.get(k, 0.0) + step_stats[k]


def step_times(record: dict, gen_seconds: float, grade_seconds: float, logprob_seconds: float, start: float) -> dict:
    """The step-time breakdown for metrics.jsonl: time_generate (the engine, grading that ran
    beside it included), time_grade (grading left after the last completion: the critical path),
    time_logprobs (old/reference log-probs, values), time_update (from `record`), time_other
    (the rest: batching, advantages, probes, logging) and step_time, all wall seconds."""
    total = time.perf_counter() - start
    times = {"time_generate": gen_seconds, "time_grade": grade_seconds, "time_logprobs": logprob_seconds,
             "time_update": record.get("time_update", 0.0)}
    times["time_other"] = max(0.0, total - sum(times.values()))
    return {**times, "step_time": total}
