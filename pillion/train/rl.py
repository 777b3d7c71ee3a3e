"""The RL loop: GRPO and its family, PPO with a critic, VAPO, RAFT and Reinforce-Rej.

    pillion train                                     # the CPU default: tiny model, GRPO, eval before/after
    pillion train configs/dapo.yaml model=DIR         # one process: CPU or one GPU
    pillion train algo=ppo model=DIR out=runs/ppo --resume
    pillion train algo=grpo model=DIR device=cuda dtype=bfloat16    # one GPU (torchrun: not yet, see parallel.py)

One step, top to bottom: sample prompts -> generate G completions each with pillion's engine
-> grade them -> filter groups -> log-probs (old, reference) and values -> advantages ->
clipped policy loss (+ KL, entropy, NLL terms) with micro-batches -> optimizer step -> log,
checkpoint, evaluate. The formulas live in `pillion.algorithms` (shared/ALGORITHMS.md);
`objective.py` picks among them from the config.

Where this departs from the papers: sizes are scaled down (presets note the paper values);
each rollout batch is used for `ppo_epochs` x `mini_batches` updates, and with one update the
old log-probs are the trainer's own log-probs of the same forward (ratio exactly 1), so no
separate no-grad pass is spent; the engine's log-probs are compared with them every step
(`logprob_error`, ALGORITHMS §13.1) rather than trusted. A non-finite loss or gradient skips
the update; `max_bad_steps` in a row stop the run with the last good checkpoint intact.
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
from pillion.model.sequences import SequenceBatch, pack, response_logprobs
from pillion.rewards import GradingPool, extract_answer, score_batch
from pillion.rollout.engine import Completion, Engine, SamplingParams, compiled_decode_step, decode_step
from pillion.train import common, parallel, state
from pillion.train.objective import Counts, actor_loss, advantages, loss_mask

log = logging.getLogger("pillion.train")


class TrainingStopped(RuntimeError):
    """The run stopped itself (non-finite updates); the message says why and where to resume."""


@dataclass
class Rollout:
    problems: list[Problem]  # one per row; groups of `group_size` rows are contiguous
    completions: list[Completion]
    scores: torch.Tensor  # [B] rewards
    correct: torch.Tensor  # [B] bool
    gen_batches: int  # generation batches spent (DAPO dynamic sampling may use several)
    gen_seconds: float


def generate_and_score(engine, problems, cfg, seed, pool):
    """G completions per problem, graded; rows grouped per problem."""
    prompts = [render_prompt(p, cfg.data.template, engine.tokenizer) for p in problems]
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=seed)
    completions = engine.generate(prompts, params)
    rows = [problems[c.prompt_index] for c in completions]
    results = score_batch(rows, [c.text for c in completions], [len(c.ids) for c in completions], cfg.reward,
                          finish_reasons=[c.finish_reason for c in completions], pool=pool)
    return rows, completions, results


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
        rows, completions, results = generate_and_score(engine, problems, cfg, seed, pool)
        scores = torch.tensor([r.score for r in results], dtype=torch.float32)
        correct = torch.tensor([bool(r.correct) for r in results])
        keep = torch.ones(len(rows), dtype=torch.bool)
        if cfg.filter.reject == "all_equal":  # Reinforce-Rej: drop all-right / all-wrong groups
            keep = filters.reject_all_equal(scores, G)
        if cfg.filter.dynamic_sampling:  # DAPO: keep groups with mixed outcomes (accuracy)
            keep = keep & filters.mixed_groups(correct, G)
        buffer.add(keep, list(zip(rows, completions, scores.tolist(), correct.tolist())))
        if buffer.full:
            break
    if cfg.filter.dynamic_sampling and not buffer.full:
        log.warning(buffer.give_up_message(max_batches))
    kept = buffer.rows
    return Rollout(
        problems=[r[0] for r in kept],
        completions=[r[1] for r in kept],
        scores=torch.tensor([r[2] for r in kept], dtype=torch.float32),
        correct=torch.tensor([r[3] for r in kept], dtype=torch.bool),
        gen_batches=gen_batch + 1,
        gen_seconds=time.perf_counter() - start,
    )


def rows_of(batch: SequenceBatch, rows: torch.Tensor) -> SequenceBatch:
    return SequenceBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.response_mask[rows], batch.prompt_len)


def chunks(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@torch.no_grad()
def forward_no_grad(model, batch, cfg, rows_per_pass):
    """log-probs [B, T] of the responses under `model` (no grad, micro-batched)."""
    out = [response_logprobs(model, rows_of(batch, r), cfg.temperature)[0]
           for r in chunks(torch.arange(batch.input_ids.shape[0]), rows_per_pass)]
    return torch.cat(out)


@torch.no_grad()
def critic_values(critic, batch, rows_per_pass):
    rows = chunks(torch.arange(batch.input_ids.shape[0]), rows_per_pass)
    return torch.cat([critic.values(rows_of(batch, r)) for r in rows])


def optimizer_step(params, optimizer, grad_clip) -> tuple[float, bool]:
    """Clip and step; skip (and clear) the update when the gradient is not finite."""
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    ok = bool(torch.isfinite(norm))
    if ok:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm), ok


def update(policy, optimizer, critic, critic_opt, cfg, batch, t, world, train_policy=True):
    """ppo_epochs x mini_batches optimizer steps over the rollout batch; returns stats.

    t: dict of [B, T] / [B] tensors: mask, adv, old_logp (or None: on-policy), ref_logp,
    gen_logp, correct, returns, old_values.
    """
    B = batch.input_ids.shape[0]
    stats: dict[str, list[float]] = {}
    skipped = 0
    on_policy = t["old_logp"] is None
    trainer_logp = torch.zeros_like(t["mask"], dtype=torch.float32)  # first-pass log-probs, for the check
    for epoch in range(cfg.ppo_epochs):
        for mb in chunks(torch.arange(B), -(-B // cfg.mini_batches)):
            mask = t["mask"][mb]
            counts = Counts.of(mask, t["correct"][mb], cfg.loss.agg, cfg.loss.norm_len or cfg.max_new_tokens)
            counts.num_tokens = parallel.sum_int(counts.num_tokens, world)
            counts.num_seqs = parallel.sum_int(counts.num_seqs, world)
            counts.num_positive_tokens = parallel.sum_int(counts.num_positive_tokens, world)
            for micro in chunks(mb, cfg.micro_batch):
                sub = rows_of(batch, micro)
                if train_policy:
                    logp, entropy = response_logprobs(policy, sub, cfg.temperature, with_entropy=True)  # [b, T]
                    old = logp.detach() if on_policy else t["old_logp"][micro]
                    if epoch == 0:
                        trainer_logp[micro] = logp.detach()
                    ref = t["ref_logp"][micro] if t["ref_logp"] is not None else None
                    loss, st = actor_loss(cfg, logp, old, t["adv"][micro], t["mask"][micro], counts, ref,
                                          t["gen_logp"][micro], entropy, t["correct"][micro])
                    loss.backward()
                    st["entropy"] = float(L.aggregate(entropy.detach(), t["mask"][micro], "token_mean"))
                    for k, v in st.items():
                        stats.setdefault(k, []).append(v)
                if critic is not None:
                    values = critic.values(sub)  # [b, T]
                    vloss, vst = L.value_loss(values, t["old_values"][micro], t["returns"][micro], t["mask"][micro],
                                              cfg.ppo.value_clip, "token_mean", num_tokens=counts.num_tokens)
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
    return out, trainer_logp if on_policy else t["old_logp"]


def build_data(cfg):
    """Training pools (a mixture over cfg.data.sources), SRPO history, stages, held-out sets."""
    pools, _ = common.load_data(cfg.data, cfg.seed)
    heldout = common.heldout_sets(cfg.data, cfg.seed)  # name -> problems, each evaluated on its own
    mixture = Mixture(pools, weights=cfg.data.weights, seed=cfg.seed)
    stages = parse_stages(cfg.data.stages) if cfg.data.stages else []
    return pools, mixture, HistoryResampler(), stages, heldout


def train(cfg: config_lib.TrainConfig, resume: bool = False) -> dict:
    """Run RL training as configured; returns the final report (also written to report.json)."""
    # ---- setup: run directory, world, models, optimizers, engine, data, grader -------------
    world = parallel.init()
    run_dir = Path(cfg.out) if cfg.out else common.default_run_dir(cfg.algo)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, run_dir / "config.yaml")
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
    pools, mixture, history, stages, heldout = build_data(cfg)
    pool = GradingPool(workers=cfg.grading_workers, timeout=cfg.reward.timeout)
    metrics = common.MetricsLog(run_dir)
    report: dict = {"run_dir": str(run_dir), "algo": cfg.algo, "n_heldout": len(next(iter(heldout.values())))}
    start, bad_streak = 0, 0

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
        metrics.truncate_after(start)
        print(f"resumed from {checkpoint} at step {start}")

    def prompts_for(step: int, gen_batch: int) -> list[Problem]:
        if stages:  # SRPO two-stage schedule: the stage's source weights
            mixture.set_weights(stage_at(stages, step)[1].sources)
        return mixture.sample(cfg.prompts_per_step)

    def run_eval(tag: str) -> dict:  # {set name: result}
        return evaluate_sets(engine, heldout, cfg.eval, cfg.data.template, cfg.reward, pool=pool, tag=tag)

    if start == 0 and world.main:
        report.update(report_entries(run_eval("before RL"), "before"))

    # ---- the loop -----------------------------------------------------------------------------
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
            record_history(history, mixture, ro, cfg.group_size)
        answered = [extract_answer(c.text, cfg.reward.answer_style) is not None for c in ro.completions]
        record = {"step": step + 1, "reward": float(ro.scores.mean()) if len(ro.scores) else 0.0,
                  "accuracy": float(ro.correct.float().mean()) if len(ro.correct) else 0.0,
                  "answered": sum(answered) / max(len(answered), 1),  # a final answer in the graded style
                  "kept_groups": len(ro.problems) // cfg.group_size, "gen_batches": ro.gen_batches}
        if not ro.completions:
            log.warning("step %d: no groups left after filtering; skipping the update", step + 1)
            metrics.write({**record, "skipped_updates": 1})
            bar.update(1)
            continue

        # 2. Tensors: [left-padded prompt | response] rows, engine log-probs, masks.
        batch = pack([c.prompt_ids for c in ro.completions], [c.ids for c in ro.completions], engine.pad_id, device)
        gen_logp = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=device)  # [B, T]
        for i, c in enumerate(ro.completions):
            gen_logp[i, : len(c.ids)] = c.logprobs.to(device)
        truncated = torch.tensor([c.finish_reason == "length" for c in ro.completions], device=device)
        correct = ro.correct.to(device)
        mask = batch.response_mask.float()  # [B, T]

        # 3. Old log-probs (only when a rollout feeds several updates), reference, values.
        on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and cfg.loss.tis_cap is None
        old_logp = None if on_policy else forward_no_grad(policy, batch, cfg, cfg.micro_batch)
        ref_logp = forward_no_grad(ref, batch, cfg, cfg.micro_batch) if ref is not None else None
        values = critic_values(critic, batch, cfg.micro_batch) if critic is not None else None

        # 4. Advantages [B, T] (and critic returns for GAE). With kl_in=reward the KL penalty
        #    uses the behaviour log-probs: the trainer's when available, else the engine's.
        behaviour = old_logp if old_logp is not None else gen_logp
        adv, returns = advantages(cfg, ro.scores.to(device), mask, behaviour, ref_logp, values)
        train_mask = loss_mask(cfg, mask, correct, truncated)

        # 5. Policy (and critic) updates; VAPO pretrains the critic alone first.
        train_policy = critic is None or step >= cfg.ppo.value_pretrain_steps
        tensors = dict(mask=train_mask, adv=adv, old_logp=old_logp, ref_logp=ref_logp, gen_logp=gen_logp,
                       correct=correct, returns=returns, old_values=values)
        stats, trainer_logp = update(policy, optimizer, critic, critic_opt, cfg, batch, tensors, world, train_policy)

        # 6. Log: rewards, lengths, KL, clipping, alignment of engine and trainer log-probs, speed.
        lengths = mask.sum(-1)
        gen_tokens = int(lengths.sum())
        record.update(stats)
        record.update({
            "response_length": float(lengths.mean()),
            "truncated": float(truncated.float().mean()),
            "logprob_error": L.token_mult_prob_error(gen_logp, trainer_logp, mask) if train_policy else 1.0,
            "tokens_per_s": gen_tokens / max(ro.gen_seconds, 1e-9),
            "step_time": time.perf_counter() - t0,
            "lr": optimizer.param_groups[0]["lr"],
        })
        if ref_logp is not None:
            record["kl"] = float(L.aggregate(L.kl(trainer_logp, ref_logp, "k3", mask), mask, "token_mean"))
        if critic is not None:
            record["explained_variance"] = float(L.explained_variance(values, returns, mask))
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
            })
    bar.close()

    # ---- final evaluation and report ------------------------------------------------------------
    if world.main:
        report.update(report_entries(run_eval("after RL"), "after"))
        _write_report(run_dir, report)
    pool.close()
    return report


def record_history(history, mixture, ro: Rollout, group_size: int) -> None:
    """SRPO: record each prompt's outcomes; at a pool's epoch end, drop its all-correct prompts."""
    for g in range(0, len(ro.problems), group_size):
        history.record(ro.problems[g].id, ro.correct[g : g + group_size].tolist())
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

    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    path = write_report(run_dir)
    print(f"pass@1 before RL {report.get('pass1_before', float('nan')):.3f}, after {report['pass1_after']:.3f} "
          f"({report['n_heldout']} held-out problems); report: {path}")
