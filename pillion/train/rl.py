"""The RL loop: GRPO and its family, PPO with a critic, VAPO, RAFT, Reinforce-Rej, online DPO.

    pillion train                                     # the CPU default: tiny model, GRPO, eval before/after
    pillion train configs/dapo.yaml model=DIR         # one process: CPU or one GPU
    pillion train out=runs/ppo --resume               # continue a run (its saved config) from its last checkpoint
    pillion train algo=grpo model=DIR device=cuda dtype=bfloat16    # one GPU
    torchrun --nproc_per_node=8 -m pillion train model=DIR device=cuda dtype=bfloat16   # 8 GPUs, FSDP2 (parallel.py)

One step, top to bottom: sample prompts -> generate G completions each with pillion's engine
-> grade them -> filter groups -> log-probs (old, reference) and values -> advantages ->
clipped policy loss (+ KL, entropy, NLL terms) with micro-batches -> optimizer step -> log,
checkpoint, evaluate. The formulas live in `pillion.algorithms` (docs/algorithms.md);
`objective.py` picks among them from the config; `batch.py` holds the step's records;
`collect.py` is step 1 (rollout, grading, filters), `update.py` steps 3 and 5 (the no-grad pass,
the optimizer steps) over the micro-batches of `schedule.py`.

Where this departs from the papers: sizes are scaled down (presets note the paper values);
each rollout batch is used for `ppo_epochs` x `mini_batches` updates, and with one update the
old log-probs are the trainer's own log-probs of the same forward (ratio exactly 1), so no
separate no-grad pass is spent; the engine's log-probs are compared with them every step
(`logprob_error`, docs/algorithms.md §13.1) rather than trusted. A non-finite loss or gradient
skips the update; `max_bad_steps` in a row stop the run with the last good checkpoint intact.
Online DPO (adv=dpo) keeps each group's best and worst sample as a pair in step 1 and turns the
DPO loss into per-row advantages in step 4 (docs/algorithms.md §16); a judge model
(reward.judge.model) adds its pairwise term to the rewards in step 1 (§17).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pillion import config as config_lib
from pillion import ranks, threads
from pillion.data.history import HistoryResampler, fit_stages, parse_stages, stage_at
from pillion.data.mixture import Mixture
from pillion.eval.behaviour import behaviour_metrics
from pillion.eval.evaluate import eval_metrics, evaluate_sets, report_entries
from pillion.eval.report import write_report
from pillion.eval.select import select_training_pool
from pillion.files import DiskFullError
from pillion.model.sequences import compile_training
from pillion.model.tokenizer import eos_token_ids, load_tokenizer
from pillion.problem import Problem
from pillion.rewards import GradingPool
from pillion.rollout.engine import Engine
from pillion.rollout.judge import Judge, load_judge
from pillion.rollout.step import compiled_decode_step, decode_step
from pillion.rollout.tools import tool_metrics, tools_from_config
from pillion.train import common, parallel, sharded, state
from pillion.train import stats as stats_lib
from pillion.train.batch import Sample, TrainBatch, make_batch
from pillion.train.collect import Rollout, prompt_batches, rollout
from pillion.train.models import Models, Optimizers, build_models, build_optimizers, kl_probe, refresh_reference
from pillion.train.objective import advantages, loss_mask, preference_metrics, rows_per_group
from pillion.train.update import logprob_pass, step_times, update

log = logging.getLogger("pillion.train")


@parallel.record  # torchrun: a rank's exception reaches the job's failure summary
def train(cfg: config_lib.TrainConfig, resume: bool = False, overwrite: bool = False, before: dict | None = None
          ) -> dict:
    """Run RL training as configured; returns the final report (also written to report.json).
    `before`: report entries of the starting model's evaluation, when the caller has them (phases.py)."""
    run = setup(cfg, resume, overwrite)  # world, models, optimizers, engine, data, grader, run folder; resume
    done, bad_streak = run.start, 0  # steps done (an interrupt's message says it); non-finite updates in a row
    try:
        if run.start == 0:
            run.report.update(before or report_entries(evaluate_heldout(run, cfg, "before RL"), "before"))

        # ---- the loop -------------------------------------------------------------------------
        bar = common.progress(cfg.steps, run.start, f"{cfg.algo}")
        for step in range(run.start, cfg.steps):
            done, t0 = step, time.perf_counter()
            for group in run.optimizers.policy.param_groups:
                group["lr"] = cfg.lr * common.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)

            # 1. Rollout: the step's prompts -> G completions each -> rewards, with the group filters applied.
            ro = generate(run, cfg, step)
            record = rollout_metrics(ro, run.engine, cfg, step)
            if ro.kept_groups - ro.tied_groups <= 0:  # over every rank (DPO: no pair with a preference): all skip
                log.warning("step %d: no groups left after filtering; skipping the update", step + 1)
                run.metrics.write({**ranks.reduce_record(record, run.world), "skipped_updates": 1})
                bar.update(1)
                continue

            # 2. Tensors: [left-padded prompt | response] rows, engine log-probs, rewards, masks.
            #    With several ranks, whole groups first move so that ranks hold as many groups of
            #    each mini-batch (padding copies where the filters left too few) and about as many tokens.
            share = parallel.balance_groups(ro.samples, ro.positions, ro.kept_groups, rows_per_group(cfg),
                                            cfg.mini_batches, run.world)
            batch = make_batch(share.samples, run.engine.pad_id, run.device, share.global_rows, share.mini_batch_rows)

            # 3. One no-grad pass: old log-probs (only when a rollout feeds several updates),
            #    reference log-probs (a KL term, DPO), values (a critic). DPO's advantages need the
            #    whole pair's log-probs before any backward, so it always takes the old ones.
            on_policy = (cfg.ppo_epochs == 1 and cfg.mini_batches == 1 and cfg.loss.tis_cap is None
                         and cfg.adv.name != "dpo")
            logprob_seconds = logprob_pass(run.models, cfg, batch, need_old=not on_policy, world=run.world)

            # 4. Advantages [B, T] (and critic returns for GAE). With kl_in=reward the KL penalty
            #    needs the rollout policy's log-probs: the trainer's when computed, else the engine's.
            rollout_logprobs = batch.old_logprobs if batch.old_logprobs is not None else batch.engine_logprobs
            batch.advantages, batch.returns = advantages(cfg, batch.scores, batch.response_mask, rollout_logprobs,
                                                         batch.ref_logprobs, batch.values, run.world)
            batch.loss_mask = loss_mask(cfg, batch.response_mask, batch.correct, batch.truncated, batch.scores)
            if cfg.adv.name == "dpo":  # the pairs' DPO loss, accuracy and margin before the update
                record.update(preference_metrics(cfg, batch, run.world))

            # 5. Policy (and critic) updates; VAPO pretrains the critic alone first. Every
            #    behaviour.kl_probe_every steps, the drift from the initial policy before it.
            if cfg.behaviour.kl_probe_every and step % cfg.behaviour.kl_probe_every == 0:
                record.update(kl_probe(run.models, batch.seqs, cfg.temperature, cfg.behaviour.kl_probe_rows,
                                       batch.global_rows, run.world))
            train_policy = run.models.critic is None or step >= cfg.ppo.value_pretrain_steps
            stats = update(run.models, run.optimizers, cfg, batch, run.world, train_policy=train_policy)
            if cfg.adv.name == "dpo" and cfg.dpo.ref_update_every and (step + 1) % cfg.dpo.ref_update_every == 0:
                refresh_reference(run.models)  # iterative DPO: the next round's reference is this policy

            # 6. Log: rewards, lengths, KL, clipping, alignment of engine and trainer log-probs, speed.
            record = step_metrics(record, stats, batch, ro, run, logprob_seconds, t0)  # where the time went last
            bad_streak = bad_streak + 1 if stats["skipped_updates"] else 0
            log_step(run, cfg, {**record, "bad_streak": bad_streak}, step, bar)
            if bad_streak >= cfg.max_bad_steps:
                last = state.latest(run.run_dir)
                raise state.RunStopped(f"stopping at step {step + 1}: {bad_streak} updates in a row had a non-finite "
                                       f"loss or gradient; last good checkpoint: {last or 'none (no checkpoint yet)'}")

            # 7. Checkpoint and periodic evaluation.
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                run.metrics.write({"step": step + 1, **eval_metrics(evaluate_heldout(run, cfg, f"step {step + 1}"))})
            # A step whose update was skipped is not checkpointed: the newest checkpoint stays a good one.
            if ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps) and not bad_streak:
                save_checkpoint(run, cfg, step + 1)
        done = cfg.steps
        bar.close()

        # ---- final evaluation and report --------------------------------------------------------
        run.report.update(report_entries(evaluate_heldout(run, cfg, "after RL"), "after"))
        run.report["wall_seconds"] = time.perf_counter() - run.clock
        if run.world.main:
            _write_report(run.run_dir, run.report)
    except KeyboardInterrupt:
        raise state.RunInterrupted(done, run.run_dir) from None
    except DiskFullError as e:  # a checkpoint, the metrics or the report: the run resumes from its last checkpoint
        e.run_dir = run.run_dir
        raise
    finally:
        run.close()
    return run.report


# ---- setup ---------------------------------------------------------------------------------------

@dataclass
class Run:
    """What a run sets up once (`setup`) and every step uses."""

    world: ranks.World
    run_dir: Path
    device: torch.device
    model_dir: Path
    models: Models  # policy, reference, critic (train/models.py)
    optimizers: Optimizers
    engine: Engine
    judge: Judge | None  # reward.judge.model: the pairwise judge, frozen
    mixture: Mixture  # the training pools' sampler
    history: HistoryResampler  # SRPO: outcomes per prompt
    stages: list  # SRPO: source weights by step
    heldout: dict[str, list[Problem]]  # name -> problems, each set evaluated alone
    grader: GradingPool
    metrics: common.MetricsLog | parallel.NoLog  # rank 0 writes
    report: dict  # report.json, filled as the run goes
    start: int  # steps done before this call (resume)
    clock: float  # time.perf_counter() when the run would have started, uninterrupted (report["wall_seconds"])

    def close(self) -> None:
        self.grader.close()
        self.metrics.close()
        parallel.close(self.world)


def setup(cfg: config_lib.TrainConfig, resume: bool, overwrite: bool) -> Run:
    """World, models, optimizers, engine, data and grader; then the run folder, and on resume the
    weights, optimizers, sampler and history of the newest checkpoint."""
    started = time.perf_counter()
    world = parallel.init(cfg)  # torchrun: join the process group (train/parallel.py)
    run_dir = common.plan_run_dir(cfg.out, cfg.algo, resume, overwrite)  # checked, not created yet
    checkpoint = state.latest(run_dir) if resume else None  # the newest complete one (a .tmp never counts)
    if checkpoint is not None:  # adapters vs full weights: refused before anything is written
        sharded.check_lora(checkpoint, cfg.lora.rank > 0)
    common.seed_everything(cfg.seed)
    device = parallel.place(common.resolve_devices(cfg), world)  # every device key checked; cuda:LOCAL_RANK per rank
    model_dir = common.model_folder(cfg)  # a Hub id: fetched, and pinned in cfg.model to its commit
    # Policy, reference and critic with the memory options: bf16 over float32 masters, LoRA,
    # reference offload, critic device, activation checkpointing (train/models.py).
    models = build_models(cfg, model_dir, device, world)
    # CPU threads: the cores other work leaves free (pillion/threads.py);
    # chosen before the grading workers start, so that they do not count as other work.
    chosen = threads.apply(threads.choose(cfg.threads, device))
    print(chosen.line())
    if cfg.compile:  # the training forward too (dynamic shapes: one graph for every packed length)
        compile_training(models.policy)
    tokenizer = load_tokenizer(model_dir)
    optimizers = build_optimizers(models, cfg)  # bf16: masters rounded into the model per step
    judge = load_judge(cfg.reward.judge, device, models.policy.lm_head.weight.dtype)  # before the run folder exists
    decode_fn = compiled_decode_step() if cfg.compile else decode_step
    with parallel.full_weights(models.policy, world):  # the engine's device is the gathered weights' (fsdp.cpu_offload)
        engine = Engine(models.policy, tokenizer, eos_token_ids(model_dir, tokenizer), decode_fn=decode_fn,
                        tools=tools_from_config(cfg.tool))  # None unless tool.max_calls > 0
    pools, mixture, history, stages, heldout = build_data(cfg, tokenizer, models.policy.cfg.max_position_embeddings)
    if world.main:  # one writer of the run folder; the other ranks wait for it
        common.create_run_dir(run_dir, overwrite)
        state.clean_stale(run_dir)
        state.write_text_atomic(run_dir / "config.yaml", config_lib.dumps(cfg))
    ranks.barrier(world)
    grader = GradingPool(workers=cfg.grading_workers, timeout=cfg.reward.timeout)
    metrics = common.MetricsLog(run_dir, cfg.log, config_lib.to_dict(cfg)) if world.main else parallel.NoLog()
    report: dict = {"run_dir": str(run_dir), "algo": cfg.algo, "model": cfg.model,
                    "n_heldout": len(next(iter(heldout.values()), []))}  # data.heldout_size=0: no set
    if cfg.data.select.size:  # concise phase: problems the starting policy solves sometimes (eval/select.py)
        with parallel.full_weights(models.policy, world):  # every rank selects alike: same weights, same seeds
            pools, report["select"] = select_training_pool(engine, pools, cfg, grader)
        mixture = Mixture(pools, level_weights=cfg.data.level_weights, seed=cfg.seed)
    start = 0
    if checkpoint is not None:
        # saved at any number of ranks
        saved = sharded.resume(checkpoint, models, optimizers.policy, optimizers.critic, world)
        history.load_state_dict(saved["history"])
        for name, problems in pools.items():  # rebuild what history resampling left (data/history.py)
            mixture.replace_pool(name, [p for p in problems if history.keep(p)])
        mixture.load_state_dict(saved["mixture"])
        start, report = saved["step"], saved["report"]
        if cfg.adv.name == "dpo" and cfg.dpo.ref_update_every and start >= cfg.dpo.ref_update_every:
            # the round's reference is the policy of its first step: the resumed one exactly when the
            # checkpoint fell on a refresh (save_every a multiple of ref_update_every), else a later one
            refresh_reference(models)
        if cfg.threads == "auto" and report.get("threads", chosen.threads) != chosen.threads:
            # the run's count from its start: another count may sum floats in another order
            chosen = threads.apply(threads.ThreadChoice(report["threads"], "auto, as the run started with"))
            print(chosen.line())
        print(f"resumed from {checkpoint} at step {start}")
    elif resume:
        print(f"no checkpoint yet in {run_dir}: starting it again from step 0")
    report["threads"] = chosen.threads
    if resume:
        metrics.truncate_after(start)
    return Run(world, run_dir, device, model_dir, models, optimizers, engine, judge, mixture, history, stages,
               heldout, grader, metrics, report, start, started - report.get("wall_seconds", 0.0))


def build_data(cfg, tokenizer, context: int):
    """Training pools (a mixture over cfg.data.sources), SRPO history, stages, held-out sets."""
    budget = common.prompt_budget(cfg.data, context, cfg.max_new_tokens)
    pools = common.load_pools(cfg.data, cfg.seed, tokenizer, budget)
    heldout = common.heldout_sets(cfg.data, cfg.seed, tokenizer, budget)  # name -> problems, each evaluated alone
    mixture = Mixture(pools, weights=cfg.data.weights, level_weights=cfg.data.level_weights, seed=cfg.seed)
    stages = parse_stages(cfg.data.stages, cfg.data.sources, phases=False) if cfg.data.stages else []
    if stages:  # a schedule that does not add up to `steps` is scaled to it, and says so
        fitted = fit_stages(stages, cfg.steps)
        if fitted != stages:
            dropped = f" (stages {len(fitted) + 1} to {len(stages)} get no step)" if len(fitted) < len(stages) else ""
            print(f"data.stages: the schedule's {' + '.join(str(s.steps) for s in stages)} steps do not add up to "
                  f"steps={cfg.steps}; scaled to {' + '.join(str(s.steps) for s in fitted)}{dropped}")
        stages = fitted
    return pools, mixture, HistoryResampler(), stages, heldout


# ---- the steps -------------------------------------------------------------------------------------

def generate(run: Run, cfg, step: int) -> Rollout:
    """Step 1: the stage's source weights (SRPO, set once per step), then the rollout over the
    step's prompts, drawn as it takes them (collect.py); SRPO records each prompt's outcomes."""
    if run.stages:
        run.mixture.set_weights(stage_at(run.stages, step)[1].sources)
    run.models.policy.eval()
    with parallel.full_weights(run.models.policy, run.world):  # the engine reads whole weights: gathered once
        ro = rollout(run.engine, prompt_batches(run.mixture, cfg.prompts_per_step), cfg, step, run.grader, run.world,
                     run.judge)
    run.models.policy.train()
    if cfg.data.history_resampling:  # SRPO: record outcomes (every rank's kept groups), rebuild pools at epoch ends
        kept = [s for row in ro.kept for s in ro.generated[row : row + cfg.group_size]]
        record_history(run.history, run.mixture, kept, cfg.group_size)
    return ro


def rollout_metrics(ro: Rollout, engine: Engine, cfg, step: int) -> dict:
    """The step's record of its rollout, over every sample generated: filters do not flatter it."""
    rewards = [s.reward for s in ro.generated]
    n = max(len(rewards), 1)
    return {"step": step + 1, "reward": sum(r.score for r in rewards) / n,
            "accuracy": sum(bool(r.correct) for r in rewards) / n,
            "answered": sum(r.answer is not None for r in rewards) / n,  # a final answer in the graded style
            "kept_groups": max(ro.kept_groups - ro.tied_groups, 0),  # over every rank; DPO: pairs that train
            "gen_batches": ro.gen_batches,
            **behaviour_metrics([s.completion.text for s in ro.generated], [r.correct for r in rewards],
                                [len(s.completion.ids) for s in ro.generated], cfg.behaviour.phrases),
            **tool_metrics(engine.tools, [s.completion for s in ro.generated]),  # calls, errors per sample
            **({"tied_groups": ro.tied_groups} if cfg.adv.name == "dpo" else {}),  # groups without a pair
            **({"judge": sum(r.parts["judge"] for r in rewards) / n} if cfg.reward.judge.model else {})}


def step_metrics(record: dict, stats: dict, batch: TrainBatch, ro: Rollout, run: Run, logprob_seconds: float,
                 t0: float) -> dict:
    """The step's record: its rollout's, the update's stats, lengths, speed, the critic's explained
    variance, and where the step's time went (measured last)."""
    lengths = batch.response_mask.sum(-1)  # [B]
    record = {**record, **stats,
              # means over the kept rows of every rank (padding rows left out)
              **stats_lib.row_means({"response_length": lengths, "truncated": batch.truncated.float()}, batch.real,
                                    run.world),
              "tokens_per_s": float(lengths.sum()) / max(ro.gen_seconds, 1e-9),
              "lr": run.optimizers.policy.param_groups[0]["lr"]}
    if run.models.critic is not None:  # over every rank's tokens
        record["explained_variance"] = stats_lib.explained_variance(batch.values, batch.returns, batch.response_mask,
                                                                    run.world)
    return {**record, **step_times(record, ro.gen_seconds, ro.grade_seconds, logprob_seconds, t0)}


def log_step(run: Run, cfg, record: dict, step: int, bar) -> None:
    """Write the step's record (the ranks' means; rank 0 writes) and show it on the progress bar,
    or without a terminal as a line every 10 steps."""
    record = ranks.reduce_record(record, run.world)  # per-rank timings averaged; the rest is global already
    run.metrics.write(record)
    bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                    len=f"{record['response_length']:.0f}")
    bar.update(1)
    if bar.disable and ((step + 1) % 10 == 0 or step + 1 == cfg.steps):
        print(f"step {step + 1}/{cfg.steps}: reward {record['reward']:.3f} accuracy {record['accuracy']:.3f} "
              f"length {record['response_length']:.1f} step time {record['step_time']:.2f}s", flush=True)


def evaluate_heldout(run: Run, cfg, tag: str) -> dict:
    """{set name: result} on the held-out sets; each rank evaluates its share, all get the results."""
    with parallel.full_weights(run.models.policy, run.world):
        results = evaluate_sets(run.engine, run.heldout, cfg.eval, cfg.data.template, cfg.reward, run.grader, tag,
                                run.world)
    run.engine.release()  # the evaluation's cache (k samples of every problem) is not kept for the steps
    return results


def save_checkpoint(run: Run, cfg, steps: int) -> None:
    """Weights, optimizers, sampler, history and report after `steps` steps (train/sharded.py)."""
    run.report["wall_seconds"] = time.perf_counter() - run.clock  # up to here: a resumed run adds to it
    sharded.save(run.run_dir, steps, run.models, run.optimizers.policy, run.optimizers.critic, run.model_dir,
                 run.world, {"mixture": run.mixture.state_dict(), "history": run.history.state_dict(),
                             "report": run.report},
                 recipe={"template": cfg.data.template, "answer_style": cfg.reward.answer_style})


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
    state.write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2))
    path = write_report(run_dir)
    if "pass1_after" not in report:  # data.heldout_size=0
        print(f"no held-out evaluation (data.heldout_size=0); report: {path}")
        return
    print(f"pass@1 before RL {report.get('pass1_before', float('nan')):.3f}, after {report['pass1_after']:.3f} "
          f"({report['n_heldout']} held-out problems); report: {path}")
