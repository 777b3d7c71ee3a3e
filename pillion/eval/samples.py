"""k graded samples per problem: the sampling half of an evaluation, shared by pass-rate tools.

    graded = sample_and_grade(engine, problems, EvalConfig(k=4), template="plain")
    graded.counts()        # correct samples per problem; graded.texts, .correct, ... per row

Each problem is rendered with `render_prompt`, sampled k times, and every sample is graded by
`pillion.rewards.score_batch`, keeping `RewardResult.correct` (None: ungradable) and the answer
it graded. Sampling is seeded per engine call with `seed + batch index`, so the draws are
reproducible for a given (seed, batch_prompts) on the same hardware; changing batch_prompts
changes them.

Several ranks (`world`, a `pillion.ranks.World`): each rank samples its contiguous share of every
batch (`ranks.my_range`) with the batch's seed and its global row offset, so every row gets the
sample one process would draw; the graded rows are then gathered, in order, on every rank.
`pillion.eval.evaluate` reduces them to pass@k; `pillion.eval.select` and `pillion data
difficulty` read pass rates off them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm

from pillion.data.templates import render_prompt
from pillion.fields import bounded, free
from pillion.problem import Problem
from pillion.ranks import World, gather_list, my_range
from pillion.rewards.shaping import RewardConfig, score_batch
from pillion.rollout.engine import SamplingParams


@dataclass
class EvalConfig:
    """Evaluation sampling; the trainer embeds this as `eval.*` in its typed config."""

    temperature: float = bounded(0.7, low=0)  # MATH-500 protocol (docs/algorithms.md §14); 0: greedy
    top_p: float = bounded(0.95, low=0, high=1, open="low")
    k: int = bounded(4, low=1)  # samples per problem
    max_new_tokens: int = bounded(1024, low=1)
    seed: int = free(0)
    batch_prompts: int = bounded(64, low=1)  # prompts per engine.generate call


@dataclass
class Samples:
    """k graded samples per problem, prompt-major: rows i*k .. i*k+k-1 answer problems[i]."""

    problems: list[Problem]
    k: int
    texts: list[str]  # [n * k]
    num_tokens: list[int]  # [n * k] generated tokens, EOS included
    finish_reasons: list[str]  # [n * k]
    correct: list[bool | None]  # [n * k] None: ungradable
    answers: list[str | None]  # [n * k] the final answer graded (RewardResult.answer); None: none found

    def counts(self) -> list[int]:
        """Correct samples per problem."""
        k = self.k
        return [sum(c is True for c in self.correct[i * k:(i + 1) * k]) for i in range(len(self.problems))]


def sample_and_grade(engine, problems: list[Problem], cfg: EvalConfig, template: str = "plain",
                     reward_cfg: RewardConfig | None = None, progress: bool = True, pool=None,
                     desc: str = "eval", world: World | None = None) -> Samples:
    """Sample cfg.k completions per problem, batch_prompts prompts per engine call, and grade them.

    world (several ranks): each rank samples a contiguous share of every batch with the batch's
    seed and its global row offset, so every row gets the sample one process would draw; the
    graded rows are then gathered, in order, on every rank."""
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if cfg.k < 1 or cfg.batch_prompts < 1:
        raise ValueError(f"k and batch_prompts must be >= 1, got k={cfg.k}, batch_prompts={cfg.batch_prompts}")
    reward_cfg = reward_cfg or RewardConfig()
    world = world or World()
    k = cfg.k
    prompts = [render_prompt(p, template, engine.tokenizer) for p in problems]
    out = Samples(problems=list(problems), k=k, texts=[], num_tokens=[], finish_reasons=[], correct=[], answers=[])
    starts = range(0, len(problems), cfg.batch_prompts)
    bar = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, disable=None if progress else True)
    rows: list[int] = []  # global index of each graded row (several ranks)
    for batch_index, start in enumerate(bar):
        batch = problems[start:start + cfg.batch_prompts]
        first, end = my_range(len(batch), world)  # one process: the whole batch
        batch = batch[first:end]
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + batch_index, row_offset=first * k)
        completions = engine.generate(prompts[start + first:start + end], params) if batch else []
        rows += range((start + first) * k, (start + end) * k)
        if len(completions) != len(batch) * k:
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(batch)} prompts x {k}")
        # Completions come prompt-major: rows i*k .. i*k+k-1 answer problem i of the batch.
        owners = [p for p in batch for _ in range(k)]
        results = score_batch(owners, completions, reward_cfg, pool=pool)
        out.texts += [c.text for c in completions]
        out.num_tokens += [len(c.ids) for c in completions]
        out.finish_reasons += [c.finish_reason for c in completions]
        out.correct += [r.correct for r in results]
        out.answers += [r.answer for r in results]
        if progress:
            pass1 = sum(c is True for c in out.correct) / max(len(out.correct), 1)
            bar.set_postfix(pass1=f"{pass1:.3f}")
            if bar.disable:  # no terminal (a log file, CI): one line per batch instead of the bar
                print(f"{desc}: batch {batch_index + 1}/{len(starts)}, {len(out.correct) // k} problems, "
                      f"pass@1 so far {pass1:.3f}", file=sys.stderr, flush=True)
    bar.close()
    return _gather(out, rows, world) if world.size > 1 else out


def _gather(local: Samples, rows: list[int], world: World) -> Samples:
    """Every rank's graded rows, put back in global row order."""
    fields = ("texts", "num_tokens", "finish_reasons", "correct", "answers")
    parts = gather_list([(rows, [getattr(local, f) for f in fields])], world)  # one (rows, columns) per rank
    merged = sorted((r, [values[i] for values in columns]) for index, columns in parts for i, r in enumerate(index))
    out = Samples(problems=local.problems, k=local.k, texts=[], num_tokens=[], finish_reasons=[], correct=[],
                  answers=[])
    for f, column in zip(fields, zip(*(row for _, row in merged))):
        setattr(out, f, list(column))
    return out
