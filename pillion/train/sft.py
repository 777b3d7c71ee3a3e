"""Supervised warm-up on worked solutions: cross-entropy on response tokens only.

    pillion sft data.sources='{gsm8k: data/gsm8k_train.jsonl}' model=DIR steps=2000
    pillion sft init=tiny steps=600 out=runs/sft-tiny      # a fresh tiny model on arithmetic
    pillion sft out=runs/sft-tiny --resume                 # continue from its last checkpoint
    torchrun --nproc_per_node=2 -m pillion sft init=tiny   # two ranks: FSDP2, batch_size split (train/parallel.py)

Each example is [prompt (rendered with data.template) | solution + EOS]; the loss is the mean
negative log-likelihood over the solution tokens of the batch (token mean), so the prompt is
context only. Published GRPO studies found that a light warm-up on long chain-of-thought
decides how far RL can go; this is that step. The final model is written as a Hugging Face
folder to OUT/final, and held-out pass@1 is measured before and after.

With N ranks every rank draws the same global batch and trains on its contiguous share
(`batch_size / N` examples); the token count of the loss is summed over ranks and FSDP2 sums
the gradients, so the step equals one process's on the same batch.

Checkpoints are the RL loop's (train/state.py, train/sharded.py): every `save_every` steps and
after the last, written atomically, sharded with torch.distributed.checkpoint at N > 1, each
holding the weights, the optimizer, the sampler's state (the data order) and the RNG. `--resume`
continues from the newest one at any number of ranks and logs what the uninterrupted run logs:
a kill at any moment (Ctrl-C, `kill -9` of any rank) loses only the steps since it. With
init=tiny the run folder keeps the fresh model in `init/` (the checkpoints' structure and
tokenizer); the final model goes to `final/`, renamed into place once complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pillion import config as config_lib
from pillion import ranks, threads
from pillion.algorithms.losses import aggregate
from pillion.data.mixture import Mixture
from pillion.data.templates import STEP_CONTEXT, render_prompt
from pillion.eval.evaluate import evaluate
from pillion.files import DiskFullError, writing
from pillion.model.checkpoint import save_model, write_recipe
from pillion.model.sequences import pack, response_logprobs
from pillion.model.tokenizer import eos_token_ids, load_tokenizer
from pillion.rollout.engine import Engine
from pillion.train import common, parallel, precision, sharded, state
from pillion.train.models import Models, compute_dtype, load_trainable, optimizer_target
from pillion.train.optim import make_optimizer


def examples(problems, tokenizer, template: str, eos_id: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + EOS) per problem (`sft` checks that every problem has one).

    A step row (`pillion data swirl`, data/swirl.py) carries `step_context`, the response before
    its action, which `render_prompt` appends to the prompt: the action alone carries loss; with
    `continues` a tool output follows the action, and no EOS is trained after it."""
    out = []
    for p in problems:
        prompt = render_prompt(p, template, tokenizer)
        end = [] if p.meta.get(STEP_CONTEXT) is not None and p.meta.get("continues") is True else [eos_id]
        out.append((tokenizer.encode(prompt, add_special_tokens=False),
                    tokenizer.encode(p.solution, add_special_tokens=False) + end))
    return out


def initial_model(cfg: config_lib.SFTConfig, folder: Path) -> Path:
    """The model folder to start from: cfg.model, or a fresh tiny model written into `folder`."""
    if cfg.init == "tiny":
        from pillion.model.tiny import make_tiny_checkpoint

        t = cfg.tiny
        return make_tiny_checkpoint(folder / "init", t.family, hidden_size=t.hidden_size, num_layers=t.num_layers,
                                    num_heads=t.num_heads, num_kv_heads=t.num_kv_heads,
                                    intermediate_size=t.intermediate_size, tie_word_embeddings=t.tie_word_embeddings,
                                    seed=cfg.seed)
    return common.model_folder(cfg)  # a Hub id is pinned to its commit in cfg.model


def copy_folder(source: Path, target: Path) -> None:
    """Copy a folder through `target.tmp` and a rename: a kill leaves the whole copy or none."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(target, cleanup=tmp):
        shutil.copytree(source, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)


@parallel.record  # torchrun: a rank's exception reaches the job's failure summary
def sft(cfg: config_lib.SFTConfig, resume: bool = False, overwrite: bool = False) -> dict:
    # The run folder is checked first and created only once config, model and data have loaded.
    run_dir = common.plan_run_dir(cfg.out, "sft", resume=resume, overwrite=overwrite)
    common.seed_everything(cfg.seed)
    kept = run_dir / "init"  # init=tiny: the run's copy of its fresh model
    with tempfile.TemporaryDirectory() as scratch:  # a fresh tiny model is built here, then kept
        # Built before joining the process group: transformers then writes it on every rank. A
        # resumed run reads its own copy (built again from the seed if a kill came before the copy).
        reuse = resume and cfg.init != "none" and (kept / "config.json").is_file()
        model_dir = kept if reuse else initial_model(cfg, Path(scratch))
        world = parallel.init(cfg)
        device = parallel.place(common.resolve_device(cfg.device), world)
        # dtype=bfloat16: bf16 compute over float32 master weights, the optimizer's (train/precision.py).
        model, params, master = load_trainable(model_dir, compute_dtype(cfg.dtype), device, world=world,
                                               cpu_offload=parallel.offloads(cfg))
        chosen = threads.apply(threads.choose(cfg.threads, device))
        print(chosen.line())
        tokenizer = load_tokenizer(model_dir)
        budget = common.prompt_budget(cfg.data, model.cfg.max_position_embeddings, cfg.eval.max_new_tokens)
        pools, heldout = common.load_data(cfg.data, cfg.seed, tokenizer, budget)
        for name, problems in pools.items():
            if missing := [p.id for p in problems if not p.solution]:
                raise common.RunError(f"data source {name!r}: SFT needs worked solutions, and {len(missing)} "
                                      f"problems have none (first: {missing[0]})")
        if world.main:  # one writer; every rank built the same tiny model from the seed
            common.create_run_dir(run_dir, overwrite)
            state.clean_stale(run_dir)  # checkpoint writes a kill cut short
            state.write_text_atomic(run_dir / "config.yaml", config_lib.dumps(cfg))  # first: the folder is a run
            if cfg.init != "none" and not reuse:
                copy_folder(model_dir, kept)
        ranks.barrier(world)
        model_dir = kept if cfg.init != "none" else model_dir
    eos = eos_token_ids(model_dir, tokenizer)[0]
    with parallel.full_weights(model, world):  # the engine's device is the gathered weights' (fsdp.cpu_offload)
        engine = Engine(model, tokenizer, eos_token_ids(model_dir, tokenizer))
    mixture = Mixture(pools, weights=cfg.data.weights, level_weights=cfg.data.level_weights, seed=cfg.seed)
    # optim=muon | dion get the model itself, to find its hidden matrices (train/models.py optimizer_target)
    optimizer = make_optimizer(optimizer_target(model, params), cfg.optim, cfg.lr, cfg.weight_decay)
    precision.sync_after_step(optimizer, master)
    models = Models(policy=model, policy_params=params, policy_master=master)  # what train/sharded.py saves
    # metrics.jsonl, and a copy to the trackers log.* turns on (train/trackers.py)
    metrics = common.MetricsLog(run_dir, cfg.log, config_lib.to_dict(cfg)) if world.main else parallel.NoLog()
    start, final_loss = 0, None
    checkpoint = state.latest(run_dir) if resume else None
    if checkpoint is not None:  # saved at any number of ranks: weights, optimizer, data order, RNG
        saved = sharded.resume(checkpoint, models, optimizer, None, world)
        mixture.load_state_dict(saved["mixture"])
        start, final_loss = saved["step"], saved["loss"]
        if cfg.threads == "auto" and saved["threads"] != chosen.threads:
            # the run's count from its start: another count may sum floats in another order
            chosen = threads.apply(threads.ThreadChoice(saved["threads"], "auto, as the run started with"))
            print(chosen.line())
        print(f"resumed from {checkpoint} at step {start}")
    elif resume:
        print(f"no checkpoint yet in {run_dir}: starting it again from step 0")
    if resume:
        metrics.truncate_after(start)  # steps logged after the checkpoint are done again

    done, bad_streak = start, 0  # steps done (an interrupt's message says it); non-finite updates in a row
    bar = common.progress(cfg.steps, start, "sft")
    try:
        for step in range(start, cfg.steps):
            done, t0 = step, time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * common.lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)
            # Every rank draws the same global batch and trains on its share of it.
            problems = ranks.my_slice(mixture.sample(cfg.batch_size), world)
            pairs = examples(problems, tokenizer, cfg.data.template, eos)
            batch = pack([p for p, _ in pairs], [r for _, r in pairs], engine.pad_id, device)
            logp, _ = response_logprobs(model, batch)  # [B, T]
            tokens = ranks.sum_int(int(batch.response_mask.sum()), world)  # over every rank's rows
            loss = aggregate(-logp, batch.response_mask, "token_mean", num_tokens=tokens)  # mean NLL per solution token
            loss.backward()
            norm = parallel.clip_grad_norm(params, cfg.grad_clip)
            finite = bool(torch.isfinite(norm))  # the global norm: every rank skips alike
            if finite:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bad_streak = 0 if finite else bad_streak + 1
            record = {"step": step + 1, "loss": ranks.sum_floats({"loss": float(loss.detach())}, world)["loss"],
                      "grad_norm": float(norm), "skipped_updates": int(not finite),
                      "lr": optimizer.param_groups[0]["lr"], "step_time": time.perf_counter() - t0}
            metrics.write(record)
            final_loss = record["loss"]
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(1)
            if bad_streak >= cfg.max_bad_steps:  # before this step's checkpoint: the newest stays one of a good step
                last = state.latest(run_dir) or "none (no checkpoint yet)"
                raise state.RunStopped(f"stopping at step {step + 1}: {bad_streak} updates in a row had a non-finite "
                                       f"loss or gradient; last checkpoint: {last} (lower lr, or raise max_bad_steps)")
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                sharded.save(run_dir, step + 1, models, optimizer, None, model_dir, world,
                             {"mixture": mixture.state_dict(), "loss": final_loss, "threads": chosen.threads},
                             recipe={"template": cfg.data.template})
        done = cfg.steps
        bar.close()
        report = finish(cfg, run_dir, model, engine, heldout, model_dir, world, final_loss, chosen.threads)
    except KeyboardInterrupt:
        raise state.RunInterrupted(done, run_dir) from None
    except DiskFullError as e:  # a checkpoint, the metrics or the final model: the run resumes from its last checkpoint
        e.run_dir = run_dir
        raise
    finally:
        bar.close()
        metrics.close()
        parallel.close(world)
    return report


def finish(cfg, run_dir: Path, model, engine: Engine, heldout, model_dir: Path, world: ranks.World,
           final_loss: float | None, n_threads: int) -> dict:
    """Held-out pass@1 of the trained model, the model to OUT/final (renamed into place once
    whole) and report.json; returns the report."""
    model.eval()
    result = None  # data.heldout_size=0: no held-out evaluation
    if heldout:
        with parallel.full_weights(model, world):  # each rank evaluates its share of the held-out set
            result = evaluate(engine, heldout, cfg.eval, cfg.data.template, progress=False, world=world)
    final = run_dir / "final"
    whole = sharded.full_model(model, world) if world.size > 1 else model  # gathered on rank 0
    report = {"final_loss": final_loss, "pass@1": result["pass@1"] if result else None,
              "n_heldout": len(heldout), "model": str(final), "threads": n_threads}
    if world.main:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(final, cleanup=tmp):
            save_model(whole, tmp, source=model_dir)
            write_recipe(tmp, {"template": cfg.data.template})
            if final.exists():  # a resumed run that had finished once
                shutil.rmtree(final)
            tmp.rename(final)
        saved = {**report, "eval": result} if result else report
        state.write_text_atomic(run_dir / "report.json", json.dumps(saved, indent=2))
    graded = (f"held-out pass@1 {result['pass@1']:.3f} (answers graded in the {result['answer_style']!r} style; "
              "pillion train grades in its reward.answer_style)" if result else "no held-out evaluation "
              "(data.heldout_size=0)")
    print(f"sft: final loss {report['final_loss']}, {graded}; model: {final}")
    ranks.barrier(world)
    return report
