"""Problems chosen by the policy's own pass rates: difficulty levels, gold checks, selection.

    counts = pass_counts(engine, problems, sampling, template, reward_cfg)   # correct of k each
    level = difficulty_level(correct, k, bins=3)                             # 1 easy .. 5 never solved
    reason = gold_issue(problem.answer)                                      # None: gradable gold
    chosen, stats = select_problems(engine, pool, SelectConfig(size=8), sampling, template, reward_cfg)

Pass rates are measured, not guessed: k samples per problem from the engine, graded by
`pillion.rewards` exactly as the trainer grades them (`pillion.eval.samples.sample_and_grade`).

Levels (`difficulty_level`). With c correct of k, level 1 is "always solved" (c = k), the last
level bins + 2 is "never solved" (c = 0), and the open interval in between is cut into `bins`
equal parts from easy to hard: level = 2 + floor((k - c) * bins / k). bins = 3 gives five
levels like MATH's (1 easiest): 1 (c = k), 2 (rate in [2/3, 1)), 3 ([1/3, 2/3)), 4 ((0, 1/3)),
5 (c = 0). Levels 1 and 5 give GRPO no signal (every group all right or all wrong), so
`data.level_weights: {1: 0, 5: 0, ...}` is the offline counterpart of DAPO's dynamic sampling.

Gold checks (`gold_issue`): SRPO (Kwaipilot 2504.14286) cleans its data of problems whose
answers the verifier cannot parse before training; a problem whose gold the grader cannot
read can never be rewarded and only adds all-wrong groups. A gold passes when, after the
grader's normalisation, it is a number, a numeric tuple/interval/set, a choice letter or a
word answer (the grader's in-process cases), or when math-verify's LaTeX parser reads it
(`$gold$`, no fallback to the raw string) and it passes the grader's safety gate.

Selection (`select_problems`, `data.select` in the trainer config): the concise-reasoning
phase (Fatemi et al. 2504.05185, docs/algorithms.md §11) trains briefly on a few problems the
current policy solves only sometimes. Candidates are drawn from the pool in a seeded shuffled
order, `batch_prompts` at a time, until `size` problems with min_pass <= pass rate <= max_pass
are found or `max_candidates` have been tried (then fewer are returned and stats say so).
Bounds are inclusive; the defaults 0.1 and 0.9 exclude 0 and 1 for any k <= 10.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

from pillion.errors import UserError
from pillion.eval.samples import EvalConfig, sample_and_grade
from pillion.fields import bounded, reject
from pillion.problem import Problem
from pillion.rewards.math import graded_in_process, safe_for_sympy
from pillion.rewards.normalize import normalize_answer
from pillion.rewards.shaping import RewardConfig


def _at_most_max_pass(min_pass: float, select: SelectConfig) -> None:
    if min_pass > select.max_pass:
        raise reject(min_pass, "is above data.select.max_pass", f"min_pass <= max_pass ({select.max_pass})")


@dataclass
class SelectConfig:
    """`data.select`: pick `size` problems the policy solves sometimes (0: no selection)."""

    size: int = bounded(0, low=0, note="0: no selection")  # problems to keep; 0: off (the concise preset sets 64)
    k: int = bounded(8, low=1)  # samples per candidate problem
    min_pass: float = bounded(0.1, low=0, high=1, check=_at_most_max_pass)  # inclusive bounds on the pass rate c / k
    max_pass: float = bounded(0.9, low=0, high=1)
    max_candidates: int = bounded(512, low=1)  # candidates tried at most (k samples each)


def difficulty_level(correct: int, k: int, bins: int = 3) -> int:
    """Level 1 (always solved) .. bins + 2 (never solved); see the module docstring."""
    if not 0 <= correct <= k or k < 1 or bins < 1:
        raise ValueError(f"need 0 <= correct <= k, k >= 1, bins >= 1; got correct={correct}, k={k}, bins={bins}")
    if correct == k:
        return 1
    if correct == 0:
        return bins + 2
    return 2 + (k - correct) * bins // k  # integer arithmetic: no rounding at bin edges


def gold_issue(gold: str | None) -> str | None:
    """Why the grader cannot use this gold answer, or None when it can (module docstring)."""
    if gold is None or not str(gold).strip():
        return "no gold answer"
    norm = normalize_answer(str(gold))
    if not norm:
        return "the gold answer is empty after normalisation"
    if graded_in_process(norm):
        return None  # a number, a word answer, a choice letter, or a numeric tuple, interval, set or matrix
    if not safe_for_sympy(norm):
        return "the gold answer has characters or a length the grader only compares as a string"
    from math_verify import LatexExtractionConfig, parse

    # math-verify's own timeout uses SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    parsed = parse(f"${norm}$", extraction_config=[LatexExtractionConfig()], fallback_mode="no_fallback",
                   parsing_timeout=timeout)
    return None if parsed else "math-verify cannot parse the gold answer"


def pass_counts(engine, problems: list[Problem], sampling: EvalConfig, template: str,
                reward_cfg: RewardConfig, pool=None, progress: bool = False) -> list[int]:
    """Correct samples out of sampling.k for each problem (ungradable problems: 0)."""
    return sample_and_grade(engine, problems, sampling, template, reward_cfg, progress, pool,
                            desc="pass rates").counts()


def select_problems(engine, problems: list[Problem], cfg: SelectConfig, sampling: EvalConfig, template: str,
                    reward_cfg: RewardConfig, pool=None, seed: int = 0) -> tuple[list[Problem], dict[str, Any]]:
    """Up to cfg.size problems with cfg.min_pass <= pass rate <= cfg.max_pass; and stats.

    `sampling` gives temperature, top-p, token budget, seed and batch_prompts (use the
    trainer's sampling, so the rates are those the next phase sees); its k is replaced by
    cfg.k. stats: tested, selected, wanted, histogram {correct count: problems}, and rates of
    the selected problems (id -> rate).
    """
    if cfg.size < 1 or cfg.k < 1 or cfg.max_candidates < 1:
        raise ValueError(f"data.select: size, k and max_candidates must be >= 1, got {cfg}")
    if not 0.0 <= cfg.min_pass <= cfg.max_pass <= 1.0:
        raise ValueError(f"data.select: need 0 <= min_pass <= max_pass <= 1, got {cfg.min_pass}, {cfg.max_pass}")
    order = list(range(len(problems)))
    random.Random(f"select/{seed}").shuffle(order)
    candidates = [problems[i] for i in order[:cfg.max_candidates]]
    chosen: list[Problem] = []
    rates: dict[str, float] = {}
    histogram = [0] * (cfg.k + 1)
    tested = 0
    step = max(1, sampling.batch_prompts)
    for chunk_index, start in enumerate(range(0, len(candidates), step)):
        chunk = candidates[start:start + step]
        # One engine call per chunk, seeded as one evaluate() call over all chunks would be.
        chunk_sampling = EvalConfig(temperature=sampling.temperature, top_p=sampling.top_p, k=cfg.k,
                                    max_new_tokens=sampling.max_new_tokens, seed=sampling.seed + chunk_index,
                                    batch_prompts=step)
        for problem, correct in zip(chunk, pass_counts(engine, chunk, chunk_sampling, template, reward_cfg, pool)):
            tested += 1
            histogram[correct] += 1
            rate = correct / cfg.k
            if cfg.min_pass <= rate <= cfg.max_pass and len(chosen) < cfg.size:
                chosen.append(problem)
                rates[problem.id] = rate
        if len(chosen) >= cfg.size:
            break
    stats = {"tested": tested, "selected": len(chosen), "wanted": cfg.size,
             "histogram": {str(c): n for c, n in enumerate(histogram)}, "rates": rates}
    return chosen, stats


def select_training_pool(engine, pools: dict[str, list[Problem]], cfg, pool=None
                         ) -> tuple[dict[str, list[Problem]], dict[str, Any]]:
    """The trainer's `data.select`: one pool "selected" of `data.select.size` problems, picked
    from every training pool together, and the selection stats (`select_problems`).

    `cfg` is the TrainConfig: rates are measured with the trainer's template, grader, temperature,
    top-p and token budget (top-k is not applied), as many rows (candidates x k) per engine call
    as an evaluation uses (eval.batch_prompts x eval.k), sampling seeded with `cfg.seed`. The
    engine's policy must be the run's starting weights: on resume the trainer selects again
    before the checkpoint loads, so the same seeds pick the same problems (the mixture's pool
    fingerprint in the checkpoint refuses a resume onto others).
    """
    select = cfg.data.select
    candidates = [p for name in sorted(pools) for p in pools[name]]
    per_call = max(1, cfg.eval.batch_prompts * cfg.eval.k // select.k)  # an evaluation's rows per engine call
    sampling = EvalConfig(temperature=cfg.temperature, top_p=cfg.top_p, k=select.k, max_new_tokens=cfg.max_new_tokens,
                          seed=cfg.seed, batch_prompts=per_call)
    chosen, stats = select_problems(engine, candidates, select, sampling, cfg.data.template, cfg.reward, pool,
                                    seed=cfg.seed)
    if not chosen:
        raise UserError(f"data.select: none of {stats['tested']} problems tried has a pass rate in "
                        f"[{select.min_pass}, {select.max_pass}] over k={select.k} samples (correct counts: "
                        f"{stats['histogram']}); widen min_pass/max_pass or raise max_candidates")
    print(f"data.select: {len(chosen)} of {select.size} problems with pass rate in [{select.min_pass}, "
          f"{select.max_pass}] (k={select.k}) from {stats['tested']} tried; correct counts {stats['histogram']}")
    return {"selected": chosen}, stats
