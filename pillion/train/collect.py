"""One step's rollouts: sample prompts, generate G completions each, grade them, filter groups.

The group filters (docs/algorithms.md §8) run per generation batch: Reinforce-Rej drops groups
whose rewards are all equal; DAPO's dynamic sampling keeps only groups with mixed outcomes and
generates more batches (up to `filter.max_gen_batches`) until the step's groups are full.
Every generated sample is kept in `Rollout.generated`, so that the step's logged accuracy is
the policy's, not that of the groups the filters kept. With several ranks the filters judge the
gathered global batch, so the kept groups, DAPO's refills and its counts are one process's.

Grading overlaps generation: the engine streams completions as rows finish (`Engine.stream`),
and each prompt's group is graded in a background thread (the GradingPool's workers for
symbolic answers) as soon as its last sample is out, while the other rows decode; only the
grading left after the last completion is on the step's critical path (`grade_seconds`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from pillion import ranks
from pillion.algorithms import filters
from pillion.algorithms.preference import select_pairs
from pillion.data.mixture import Mixture
from pillion.data.templates import render_prompt
from pillion.problem import Problem
from pillion.rewards import score_batch
from pillion.rollout.engine import SamplingParams
from pillion.rollout.judge import group_rewards
from pillion.train import parallel
from pillion.train.batch import Sample

log = logging.getLogger("pillion.train")


@dataclass
class Rollout:
    samples: list[Sample]  # this rank's kept groups in the step's order, rows of a group contiguous; DPO: pairs
    positions: list[int]  # each of those groups' place among the step's kept groups (every rank's)
    kept: list[int]  # the step's kept groups: the index of each one's first row in `generated`
    generated: list[Sample]  # every rank's generated samples in global order, kept or filtered out
    gen_batches: int  # generation batches spent (DAPO dynamic sampling may use several)
    gen_seconds: float  # the engine, with the grading that ran beside it
    grade_seconds: float = 0.0  # grading left after the last completion (the critical path)
    tied_groups: int = 0  # DPO: kept groups (over every rank) whose rewards were all equal, so gave no pair

    @property
    def kept_groups(self) -> int:
        """Groups kept over every rank (the update runs when there is one)."""
        return len(self.kept)


def generate_and_score(engine, problems, cfg, seed, pool, row_offset: int = 0) -> tuple[list[Sample], float, float]:
    """G completions per problem, graded group by group beside the decoding; rows grouped per
    problem, samples in order (row_offset: the global index of the first row, when this rank
    generates a share of the step's prompts). Returns (samples, generation seconds, grading
    seconds after it)."""
    prompts = [render_prompt(p, cfg.data.template, engine.tokenizer) for p in problems]
    params = SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=seed, row_offset=row_offset)
    reward = length_scaled(cfg)
    start = time.perf_counter()
    groups: dict[int, list] = {}  # prompt index -> its completions, as they finish
    graded = {}  # prompt index -> Future of its group's rewards
    with ThreadPoolExecutor(max_workers=1) as grader:
        for c in engine.stream(prompts, params):
            group = groups.setdefault(c.prompt_index, [])
            group.append(c)
            if len(group) == params.n:  # the group is complete: grade it while the rest decode
                group.sort(key=lambda c: c.sample_index)
                graded[c.prompt_index] = grader.submit(score_batch, [problems[c.prompt_index]] * len(group), group,
                                                       reward, pool)
        generated = time.perf_counter()
        rewards = {i: future.result() for i, future in graded.items()}
    samples = [Sample(problems[i], c, r) for i in sorted(groups) for c, r in zip(groups[i], rewards[i])]
    return samples, generated - start, time.perf_counter() - generated


def length_scaled(cfg):
    """The reward config of a run: without DAPO's overlong shaping, the length term (reward.
    length_weight) reaches its full weight at the run's max_new_tokens, not at overlong.l_max's
    default (20480 tokens: a term too small to matter on short budgets)."""
    reward = cfg.reward
    if reward.length_weight and not reward.overlong.enable:
        reward = replace(reward, overlong=replace(reward.overlong, l_max=cfg.max_new_tokens))
    return reward


def prompt_batches(mixture: Mixture, n: int) -> Iterator[list[Problem]]:
    """The next `n` problems of `mixture`, again and again: a batch is drawn only when the rollout
    takes it, so the mixture's position (the next step's prompts, a checkpoint's sampler state)
    moves by the generation batches the step actually ran."""
    while True:
        yield mixture.sample(n)


def judged(samples: list[Sample], judge, group_size: int, seed: int, first_group: int) -> list[Sample]:
    """Samples with the judge's term added: reward.judge.weight x each response's mean win
    probability in its group (rollout/judge.py), as the reward part "judge". Random opponents are
    drawn from (seed, global group index): the same for any number of ranks."""
    out = []
    for g in range(0, len(samples), group_size):
        group = samples[g : g + group_size]
        generator = torch.Generator().manual_seed(seed * 7919 + first_group + g // group_size)
        wins = group_rewards(judge, group[0].problem.question, [s.completion.text for s in group], generator)
        for s, win in zip(group, wins.tolist()):
            term = judge.cfg.weight * win
            reward = replace(s.reward, score=s.reward.score + term, parts={**s.reward.parts, "judge": term})
            out.append(Sample(s.problem, s.completion, reward))
    return out


def preference_pairs(samples: list[Sample], group_size: int) -> tuple[list[Sample], int]:
    """Online DPO: each group's best and worst sample as (chosen, rejected), in that order, and
    the count of groups whose rewards were all equal: their pair stays, outside the loss
    (`objective.loss_mask`), so every rank keeps two rows per prompt (algorithms/preference.py)."""
    if not samples:
        return [], 0
    scores = torch.tensor([s.reward.score for s in samples], dtype=torch.float32)  # [B]
    chosen, rejected, tied = select_pairs(scores, group_size)
    return [samples[i] for c, r in zip(chosen.tolist(), rejected.tolist()) for i in (c, r)], int(tied.sum())


def rollout(engine, prompts: Iterator[list[Problem]], cfg, step, pool, world, judge=None) -> Rollout:
    """Generate and grade one step's groups, applying Reinforce-Rej / DAPO filters. `prompts`
    yields the global list of the step's prompts (the same on every rank), one list per generation
    batch: one batch, or with DAPO's dynamic sampling a further one each time the kept groups fall
    short, up to filter.max_gen_batches (`prompt_batches`, or a plain list's iterator).

    Each rank generates its contiguous share of a batch's groups; the graded samples are gathered
    (without log-probs) after every batch, so the filters, the count of kept groups and the
    decision to draw another batch are made on the global batch, the same on every rank and the
    same as one process's. A rank keeps the kept groups it generated (`samples`, with their
    `positions` in the step's order); `parallel.balance_groups` then evens them out."""
    G = cfg.group_size
    buffer = filters.GroupBuffer(target_groups=cfg.prompts_per_step, group_size=G)  # global rows of kept groups
    max_batches = cfg.filter.max_gen_batches if cfg.filter.dynamic_sampling else 1
    gen_seconds = grade_seconds = 0.0
    generated: list[Sample] = []  # every rank's, in global order
    mine: dict[int, Sample] = {}  # global row -> this rank's sample (with its log-probs)
    for gen_batch in range(max_batches):
        problems = next(prompts)  # drawn now, not before: only the batches the step runs are drawn
        first, end = ranks.my_range(len(problems), world)
        # Keyed by the global row, not the rank: the same samples for any number of ranks.
        seed = cfg.seed * 1_000_003 + step * 1009 + gen_batch
        samples, gen, grade = generate_and_score(engine, problems[first:end], cfg, seed, pool, row_offset=first * G)
        if judge is not None:  # the judge's pairwise term, after the verifiable grade; counted as grading time
            start = time.perf_counter()
            samples = judged(samples, judge, G, seed, first)
            grade += time.perf_counter() - start
        gen_seconds, grade_seconds = gen_seconds + gen, grade_seconds + grade
        offset = len(generated)
        mine.update({offset + first * G + i: s for i, s in enumerate(samples)})
        everyone = parallel.gather_samples(samples, world)  # the batch's samples of every rank, in order
        generated += everyone
        scores = torch.tensor([s.reward.score for s in everyone], dtype=torch.float32)  # [B]
        correct = torch.tensor([bool(s.reward.correct) for s in everyone])  # [B]
        keep = torch.ones(len(everyone), dtype=torch.bool)
        if cfg.filter.reject == "all_equal":  # Reinforce-Rej: drop all-right / all-wrong groups
            keep = filters.reject_all_equal(scores, G)
        if cfg.filter.dynamic_sampling:  # DAPO: keep groups with mixed outcomes (accuracy)
            keep = keep & filters.mixed_groups(correct, G)
        buffer.add(keep, list(range(offset, offset + len(everyone))))
        if buffer.full:
            break
    if cfg.filter.dynamic_sampling and not buffer.full:
        log.warning(buffer.give_up_message(max_batches))
    kept = buffer.rows[::G]  # first global row of each kept group, in the step's order
    positions = [p for p, row in enumerate(kept) if row in mine]
    samples = [mine[kept[p] + j] for p in positions for j in range(G)]
    tied = 0
    if cfg.adv.name == "dpo":  # each of this rank's groups becomes its pair (two rows), in the same order
        samples, tied = preference_pairs(samples, G)
        tied = ranks.sum_int(tied, world)
    return Rollout(samples, positions, kept, generated, gen_batch + 1, gen_seconds, grade_seconds, tied)
