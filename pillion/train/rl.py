"""The RL loop: GRPO and its family, PPO with a critic, VAPO, RAFT and Reinforce-Rej.

    pillion train                                     # the CPU default: tiny model, GRPO, eval before/after
    pillion train configs/dapo.yaml model=DIR         # one process: CPU or one GPU
    pillion train out=runs/ppo --resume               # continue a run (its saved config) from its last checkpoint
    pillion train algo=grpo model=DIR device=cuda dtype=bfloat16    # one GPU (torchrun: not yet, see parallel.py)

One step, top to bottom: sample prompts -> generate G completions each with pillion's engine
-> grade them -> filter groups -> log-probs (old, reference) and values -> advantages ->
clipped policy loss (+ KL, entropy, NLL terms) with micro-batches -> optimizer step -> log,
checkpoint, evaluate. The formulas live in `pillion.algorithms` (docs/algorithms.md);
`objective.py` picks among them from the config; `batch.py` holds the step's records.

Where this departs from the papers: sizes are scaled down (presets note the paper values);
each rollout batch is used for `ppo_epochs` x `mini_batches` updates, and with one update the
old log-probs are the trainer's own log-probs of the same forward (ratio exactly 1), so no
separate no-grad pass is spent; the engine's log-probs are compared with them every step
(`logprob_error`, docs/algorithms.md §13.1) rather than trusted. A non-finite loss or gradient
skips the update; `max_bad_steps` in a row stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pillion import config as config_lib
from pillion.algorithms import filters
from pillion.algorithms import losses as L
from pillion.data.history import HistoryResampler, parse_stages, stage_at
from pillion.data.mixture import Mixture
from pillion.data.problem import Problem
from pillion.data.templates import render_prompt
from pillion.eval.evaluate import eval_metrics, evaluate_sets, report_entries
from pillion.model.checkpoint import eos_token_ids, load_model, load_tokenizer
from pillion.model.critic import Critic
from pillion.model.sequences import response_logprobs
from pillion.rewards import GradingPool, score_batch
from pillion.rollout.engine import Engine, SamplingParams, compiled_decode_step, decode_step
from pillion.train import common, parallel, state
from pillion.train.batch import Sample, TrainBatch, make_batch
from pillion.train.objective import Counts, actor_loss, advantages, loss_mask

log = logging.getLogger("pillion.train")


class TrainingStopped(RuntimeError):
    """The run stopped itself (non-finite updates); the message says why and where to resume."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: `step` steps were done; the run resumes from its last checkpoint."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"interrupted at step {step} (last checkpoint: {state.latest(run_dir) or 'none yet'})")
        self.step, self.run_dir = step, run_dir


@dataclass
class Rollout:
    samples: list[Sample]  # groups of `group_size` rows are contiguous
    gen_batches: int  # generation batches spent (DAPO dynamic sampling may use several)
    gen_seconds: float


def generate_and_score(engine, problems, cfg, seed, pool) -> list[Sample]:
    """G completions per problem, graded; rows grouped per problem."""
    prompts = [render_prompt(p, cfg.data.template, engine.tokenizer) for p in problems]
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)
    completions = engine.generate(prompts, params)
    rows = [problems[c.prompt_index] for c in completions]
    rewards = score_batch(rows, completions, cfg.reward, pool=pool)
    return [Sample(p, c, r) for p, c, r in zip(rows, completions, rewards)]


def rollout(engine, prompts_for, cfg, step, pool, world) -> Rollout:
    """Sample, generate and grade one step's groups, applying Reinforce-Rej / DAPO filters."""
    G = cfg.group_size
    target = len(parallel.my_slice(list(range(cfg.prompts_per_step)), world))
    buffer = filters.GroupBuffer(target_groups=max(target, 1), group_size=G)
    max_batches = cfg.filter.max_gen_batches if cfg.filter.dynamic_sampling else 1
    start = time.perf_counter()
    for gen_batch in range(max_batches):
        problems = parallel.my_slice(prompts_for(step, gen_batch), world)
        seed = (cfg.seed * 1_000_003 + step * 1009 + gen_batch) * max(world.size, 1) + world.rank
        samples = generate_and_score(engine, problems, cfg, seed, pool)
        scores = torch.tensor([s.reward.score for s in samples], dtype=torch.float32)  # [B]
        correct = torch.tensor([bool(s.reward.correct) for s in samples])  # [B]
        keep = torch.ones(len(samples), dtype=torch.bool)
        if cfg.filter.reject == "all_equal":  # Reinforce-Rej: drop all-right / all-wrong groups
            keep = filters.reject_all_equal(scores, G)
        if cfg.filter.dynamic_sampling:  # DAPO: keep groups with mixed outcomes (accuracy)
            keep = keep & filters.mixed_groups(correct, G)
        buffer.add(keep, samples)
        if buffer.full:
            break
    if cfg.filter.dynamic_sampling and not buffer.full:
        log.warning(buffer.give_up_message(max_batches))
    return Rollout(buffer.rows, gen_batch + 1, time.perf_counter() - start)


def chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@torch.no_grad()
def no_grad_pass(fn, batch: TrainBatch, rows_per_pass: int) -> torch.Tensor:
    """fn(micro-batch) -> [b, T], over the whole batch without grad: old/reference log-probs, values."""
    return torch.cat([fn(batch.rows(r)) for r in chunks(torch.arange(batch.num_rows), rows_per_pass)])


def optimizer_step(params, optimizer, grad_clip) -> tuple[float, bool]:
    """Clip and step; skip (and clear) the update when the gradient is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
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
                norm, ok = optimizer_step(list(policy.parameters()), optimizer, cfg.grad_clip)
                stats.setdefault("grad_norm", []).append(norm)
                skipped += not ok
            if critic is not None:
                _, ok = optimizer_step(list(critic.parameters()), critic_opt, cfg.grad_clip)
                skipped += not ok
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["skipped_updates"] = skipped
    out["logprob_error"] = sums["logprob_error"] / sums["tokens"] if sums["tokens"] else 1.0
    if batch.ref_logprobs is not None and sums["tokens"]:
        out["kl"] = sums["kl"] / sums["tokens"]
    return out


def build_data(cfg, tokenizer, context: int):
    """Training pools (a mixture over cfg.data.sources), SRPO history, stages, held-out sets."""
    budget = common.prompt_budget(cfg.data, context, cfg.max_new_tokens)
    pools, _ = common.load_data(cfg.data, cfg.seed, tokenizer, budget)
    heldout = common.heldout_sets(cfg.data, cfg.seed, tokenizer, budget)  # name -> problems, each evaluated alone
    mixture = Mixture(pools, weights=cfg.data.weights, seed=cfg.seed)
    stages = parse_stages(cfg.data.stages) if cfg.data.stages else []
    return pools, mixture, HistoryResampler(), stages, heldout


def train(cfg: config_lib.TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run RL training as configured; returns the final report (also written to report.json)."""
    # ---- setup: world, models, optimizers, engine, data, grader; then the run folder ---------
    world = parallel.init()
    run_dir = common.plan_run_dir(cfg.out, cfg.algo, resume, overwrite)  # checked, not created yet
    common.seed_everything(cfg.seed)
    device = common.resolve_device(cfg.device)
    model_dir = common.resolve_model(cfg.model)
    dtype = getattr(torch, cfg.dtype)
    policy = parallel.shard(load_model(model_dir, dtype=dtype, device=device), world)
    tokenizer = load_tokenizer(model_dir)
    needs_ref = cfg.loss.kl_coef > 0
    ref = load_model(model_dir, dtype=dtype, device=device).eval().requires_grad_(False) if needs_ref else None
    critic = Critic(load_model(model_dir, dtype=dtype, device=device)) if cfg.adv.name == "gae" else None
    optimizer = common.make_optimizer(policy.parameters(), cfg.lr, cfg.weight_decay)
    critic_opt = common.make_optimizer(critic.parameters(), cfg.ppo.critic_lr, 0.0) if critic else None
    decode_fn = compiled_decode_step() if cfg.compile else decode_step
    engine = Engine(policy, tokenizer, eos_token_ids(model_dir, tokenizer), decode_fn=decode_fn)
    pools, mixture, history, stages, heldout = build_data(cfg, tokenizer, policy.cfg.max_position_embeddings)
    common.create_run_dir(run_dir, overwrite)
    state.clean_stale(run_dir)
    state.write_text_atomic(run_dir / "config.yaml", config_lib.dumps(cfg))
    pool = GradingPool(workers=cfg.grading_workers, timeout=cfg.reward.timeout)
    metrics = common.MetricsLog(run_dir)
    report: dict = {"run_dir": str(run_dir), "algo": cfg.algo, "n_heldout": len(next(iter(heldout.values())))}
    start, step, bad_streak = 0, 0, 0

    # ---- resume: weights, optimizer, RNG, sampler and history from the newest checkpoint ----
    checkpoint = state.latest(run_dir) if resume else None
    if checkpoint is not None:
        saved = state.load_trainer_state(checkpoint)
        policy.load_state_dict(load_model(checkpoint, dtype=dtype, device=device).state_dict())
        optimizer.load_state_dict(saved["optimizer"])
        if critic is not None:
            critic.load_state_dict(saved["critic"])
            critic_opt.load_state_dict(saved["critic_optimizer"])
        history.load_state_dict(saved["history"])
        for name, problems in pools.items():  # rebuild what history resampling left (data/history.py)
            mixture.replace_pool(name, [p for p in problems if history.keep(p)])
        mixture.load_state_dict(saved["mixture"])
        start, report = saved["step"], saved["report"]
        print(f"resumed from {checkpoint} at step {start}")
    elif resume:
        print(f"no checkpoint yet in {run_dir}: starting it again from step 0")
    if resume:
        metrics.truncate_after(start)

    def prompts_for(step: int, gen_batch: int) -> list[Problem]:
        if stages:  # SRPO two-stage schedule: the stage's source weights
            mixture.set_weights(stage_at(stages, step)[1].sources)
        return mixture.sample(cfg.prompts_per_step)

    def run_eval(tag: str) -> dict:  # {set name: result}
        return evaluate_sets(engine, heldout, cfg.eval, cfg.data.template, cfg.reward, pool=pool, tag=tag)

    try:
        if start == 0 and world.main:
            report.update(report_entries(run_eval("before RL"), "before"))

        # ---- the loop -------------------------------------------------------------------------
        bar = common.progress(cfg.steps, start, f"{cfg.algo}")
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * common.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)

            # 1. Rollout: prompts -> G completions each -> rewards, with the group filters applied.
            policy.eval()
            ro = rollout(engine, prompts_for, cfg, step, pool, world)
            policy.train()
            if cfg.data.history_resampling:  # SRPO: record outcomes, rebuild pools at epoch ends
                record_history(history, mixture, ro.samples, cfg.group_size)
            rewards = [s.reward for s in ro.samples]
            record = {"step": step + 1, "reward": sum(r.score for r in rewards) / max(len(rewards), 1),
                      "accuracy": sum(bool(r.correct) for r in rewards) / max(len(rewards), 1),
                      # a final answer in the graded style, as the grader extracted it
                      "answered": sum(r.answer is not None for r in rewards) / max(len(rewards), 1),
                      "kept_groups": len(ro.samples) // cfg.group_size, "gen_batches": ro.gen_batches}
            if not ro.samples:
                log.warning("step %d: no groups left after filtering; skipping the update", step + 1)
                metrics.write({**record, "skipped_updates": 1})
                bar.update(1)
                continue

            # 2. Tensors: [left-padded prompt | response] rows, engine log-probs, rewards, masks.
            batch = make_batch(ro.samples, engine.pad_id, device)

            # 3. Old log-probs (only when a rollout feeds several updates), reference, values.
            on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and cfg.loss.tis_cap is None
            if not on_policy:
                batch.old_logprobs = no_grad_pass(lambda b: response_logprobs(policy, b.seqs, cfg.temperature)[0],
                                                  batch, cfg.micro_batch)
            if ref is not None:
                batch.ref_logprobs = no_grad_pass(lambda b: response_logprobs(ref, b.seqs, cfg.temperature)[0],
                                                  batch, cfg.micro_batch)
            if critic is not None:
                batch.values = no_grad_pass(lambda b: critic.values(b.seqs), batch, cfg.micro_batch)

            # 4. Advantages [B, T] (and critic returns for GAE). With kl_in=reward the KL penalty
            #    needs the rollout policy's log-probs: the trainer's when computed, else the engine's.
            rollout_logprobs = batch.old_logprobs if batch.old_logprobs is not None else batch.engine_logprobs
            batch.advantages, batch.returns = advantages(cfg, batch.scores, batch.response_mask, rollout_logprobs,
                                                         batch.ref_logprobs, batch.values)
            batch.loss_mask = loss_mask(cfg, batch.response_mask, batch.correct, batch.truncated)

            # 5. Policy (and critic) updates; VAPO pretrains the critic alone first.
            train_policy = critic is None or step >= cfg.ppo.value_pretrain_steps
            stats = update(policy, optimizer, critic, critic_opt, cfg, batch, world, train_policy)

            # 6. Log: rewards, lengths, KL, clipping, alignment of engine and trainer log-probs, speed.
            lengths = batch.response_mask.sum(-1)  # [B]
            record.update(stats)
            record.update({
                "response_length": float(lengths.mean()),
                "truncated": float(batch.truncated.float().mean()),
                "tokens_per_s": float(lengths.sum()) / max(ro.gen_seconds, 1e-9),
                "step_time": time.perf_counter() - t0,
                "lr": optimizer.param_groups[0]["lr"],
            })
            if critic is not None:
                record["explained_variance"] = float(L.explained_variance(batch.values, batch.returns,
                                                                          batch.response_mask))
            bad_streak = bad_streak + 1 if stats["skipped_updates"] else 0
            record["bad_streak"] = bad_streak
            metrics.write(record)
            bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                            len=f"{record['response_length']:.0f}")
            bar.update(1)
            if bar.disable and ((step + 1) % 10 == 0 or step + 1 == cfg.steps):  # no terminal: a line per 10 steps
                print(f"step {step + 1}/{cfg.steps}: reward {record['reward']:.3f} accuracy {record['accuracy']:.3f} "
                      f"length {record['response_length']:.1f} step time {record['step_time']:.2f}s", flush=True)
            if bad_streak >= cfg.max_bad_steps:
                last = state.latest(run_dir)
                raise TrainingStopped(f"stopping at step {step + 1}: {bad_streak} updates in a row had a non-finite "
                                      f"loss or gradient; last good checkpoint: {last or 'none (no checkpoint yet)'}")

            # 7. Checkpoint and periodic evaluation.
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and world.main:
                metrics.write({"step": step + 1, **eval_metrics(run_eval(f"step {step + 1}"))})
            # A step whose update was skipped is not checkpointed: the newest checkpoint stays a good one.
            if ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps) and world.main and not bad_streak:
                state.save(run_dir, step + 1, policy, model_dir, {
                    "optimizer": optimizer.state_dict(),
                    "critic": critic.state_dict() if critic else None,
                    "critic_optimizer": critic_opt.state_dict() if critic_opt else None,
                    "mixture": mixture.state_dict(), "history": history.state_dict(), "report": report,
                }, recipe={"template": cfg.data.template, "answer_style": cfg.reward.answer_style})
            step += 1  # steps done, for an interrupt during the final evaluation
        bar.close()

        # ---- final evaluation and report --------------------------------------------------------
        if world.main:
            report.update(report_entries(run_eval("after RL"), "after"))
            _write_report(run_dir, report)
    except KeyboardInterrupt:
        raise TrainingInterrupted(step, run_dir) from None
    finally:
        pool.close()
    return report


def record_history(history, mixture, samples: list[Sample], group_size: int) -> None:
    """SRPO: record each prompt's outcomes; at a pool's epoch end, drop its all-correct prompts."""
    for g in range(0, len(samples), group_size):
        history.record(samples[g].problem.id, [bool(s.reward.correct) for s in samples[g : g + group_size]])
    for name, problems in mixture.pools.items():
        if mixture.drawn(name) >= len(problems):
            kept = history.next_pool(problems)
            if kept:
                mixture.replace_pool(name, kept)
            else:
                log.warning("history resampling: every prompt of pool %r was solved; keeping it as is", name)


def _write_report(run_dir: Path, report: dict) -> None:
    import json

    from pillion.eval.report import write_report

    state.write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2))
    path = write_report(run_dir)
    print(f"pass@1 before RL {report.get('pass1_before', float('nan')):.3f}, after {report['pass1_after']:.3f} "
          f"({report['n_heldout']} held-out problems); report: {path}")
