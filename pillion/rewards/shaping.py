"""Reward composition: correctness, format, DAPO overlong shaping, and a length term.

`score(problem, text, num_tokens, cfg)` returns a `RewardResult` whose `parts` are the named,
already weighted terms and whose `score` is exactly their sum:

    correct   cfg.correct if the answer is right, cfg.incorrect if wrong, 0 if ungradable.
              Code problems interpolate by pass fraction f: incorrect + (correct - incorrect) * f
              (with code_reward=all_pass, f is 1 when every test passes, else 0).
              1/0 is the default; +1/-1 is DAPO's and RAFT's (docs/algorithms.md §9, §15 item 11).
    format    format_weight * 1[well formed]: exactly one final answer of `answer_style` (for
              "auto"/"fallback": one candidate of the first finder that finds any; for
              code: exactly one ```python block), the response not truncated (finish_reason
              "length"), and with think_tags, the whole text is <think>...</think> followed by
              <answer>...</answer>, each once.
    overlong  DAPO eq. 13 (docs/algorithms.md §6.4), when overlong.enable, with |y| = num_tokens:
              0 up to l_max - l_cache; ((l_max - l_cache) - |y|) / l_cache in the window;
              -1 beyond l_max; times overlong.factor.
    length    concise-reasoning term (docs/algorithms.md §11 is about the loss, not a reward term; this
              is our own, defined here): -length_weight * min(num_tokens, l_max) / l_max for
              CORRECT responses only, with l_max = overlong.l_max (the trainer sets it to the
              run's max_new_tokens when overlong shaping is off, `collect.length_scaled`).
              Among right answers the shorter one scores higher; a wrong answer gets no length
              term, so stopping early is never a way to lose less (a penalty on wrong answers
              would reward giving up). Keep length_weight below correct - incorrect and a
              right answer always outscores a wrong one.

Grading uses `extract.answer_for` and `pool.math_equal` (math problems; through a
`GradingPool` in `score_batch` when one is given) and `code.py` (code problems, sandboxed).
`RewardResult.answer` is what was graded: the final answer extracted in `answer_style` (the
program, for code), None when the completion has none; the trainer's "answered" metric reads
it instead of extracting a second time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pillion.fields import bounded, checked, free, reject
from pillion.problem import Problem
from pillion.rewards.code import SandboxLimits, code_reward, extract_code, program_of
from pillion.rewards.extract import STYLES, all_answers, answer_for
from pillion.rewards.judge import JudgeConfig
from pillion.rewards.math import imaginary_unit
from pillion.rewards.pool import GradingPool, math_equal


@dataclass
class RewardResult:
    """The record the trainer consumes. `score == sum(parts.values())`."""

    score: float
    correct: bool | None  # None when ungradable (no gold answer, no tests)
    parts: dict[str, float]
    answer: str | None = None  # the final answer graded (the program for code); None if none


def _cache_within_max(l_cache: int, overlong: OverlongConfig) -> None:
    if l_cache > overlong.l_max:
        raise reject(l_cache, "is longer than reward.overlong.l_max", f"<= l_max ({overlong.l_max})")


def _answer_style(style: str, reward: RewardConfig) -> None:
    if style not in STYLES:
        raise reject(style, "is not an answer style", f"one of {', '.join(STYLES)}")


@dataclass
class OverlongConfig:
    """DAPO's soft overlong punishment (`overlong_penalty`); the sizes are in response tokens."""

    enable: bool = False
    l_max: int = bounded(20480, low=1)
    l_cache: int = bounded(4096, low=0, check=_cache_within_max)  # the ramp before l_max; 0: a step at l_max
    factor: float = bounded(1.0, low=0)


@dataclass
class RewardConfig:
    correct: float = free(1.0)
    incorrect: float = free(0.0)
    format_weight: float = free(0.0)
    think_tags: bool = False
    length_weight: float = bounded(0.0, low=0)  # concise-reasoning term, see the module docstring
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    # extract.STYLES. "fallback" reads any way a model may answer (the default of
    # extract_answer and of `pillion eval`); training sets a strict style (TrainConfig: "boxed").
    answer_style: str = checked("fallback", _answer_style)
    timeout: float = bounded(5.0, low=0, open="low")  # CPU seconds per math comparison; wall clock per code run
    code_reward: Literal["fraction", "all_pass"] = "fraction"  # code: fraction of tests passed, or all pass (1/0)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # a pairwise judge model's term (rewards/judge.py)


def overlong_penalty(num_tokens: int, l_max: int, l_cache: int) -> float:
    """DAPO's soft overlong punishment (eq. 13), before the factor; in [-1, 0]."""
    if num_tokens <= l_max - l_cache:
        return 0.0
    if num_tokens <= l_max:
        return ((l_max - l_cache) - num_tokens) / l_cache
    return -1.0


def length_term(num_tokens: int, l_max: int, correct: bool | None) -> float:
    """-min(num_tokens, l_max) / l_max for a correct response, 0 otherwise (before weight)."""
    if correct is not True:
        return 0.0
    return -min(num_tokens, l_max) / l_max


_THINK_ANSWER = re.compile(r"\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*",
                           re.DOTALL)


def format_ok(text: str, kind: str, answer_style: str, think_tags: bool, finish_reason: str = "stop") -> bool:
    """The format condition of the module docstring."""
    if finish_reason == "length":
        return False
    if think_tags and not _THINK_ANSWER.fullmatch(text):
        return False
    if kind == "code":
        return len(re.findall(r"```(?:python|py|python3)\b", text)) == 1 and extract_code(text) is not None
    return len(all_answers(text, answer_style)) == 1


def _compose(problem: Problem, text: str, num_tokens: int, cfg: RewardConfig, finish_reason: str,
             fraction: float | None, answer: str | None) -> RewardResult:
    """Build the RewardResult from a grading outcome: fraction in [0, 1], or None if ungradable."""
    correct = None if fraction is None else fraction >= 1.0
    parts = {
        "correct": 0.0 if fraction is None else cfg.incorrect + (cfg.correct - cfg.incorrect) * fraction,
        "format": cfg.format_weight * float(format_ok(text, problem.kind, cfg.answer_style, cfg.think_tags,
                                                      finish_reason)),
        "overlong": (cfg.overlong.factor * overlong_penalty(num_tokens, cfg.overlong.l_max, cfg.overlong.l_cache)
                     if cfg.overlong.enable else 0.0),
        "length": (cfg.length_weight * length_term(num_tokens, cfg.overlong.l_max, correct)
                   if cfg.length_weight else 0.0),
    }
    return RewardResult(score=sum(parts.values()), correct=correct, parts=parts, answer=answer)


def _gradable(problem: Problem) -> bool:
    return bool(problem.tests) if problem.kind == "code" else bool(str(problem.answer).strip())


def _code_fraction(problem: Problem, text: str, cfg: RewardConfig) -> float:
    limits = SandboxLimits(wall_s=cfg.timeout, cpu_s=max(1, int(cfg.timeout + 0.999)))
    return code_reward(text, problem.tests, limits, prefix=problem.meta.get("code_prefix", ""), mode=cfg.code_reward)


def _answer(problem: Problem, text: str, cfg: RewardConfig) -> str | None:
    """The answer `score` grades: the program for code, else the final answer for the gold."""
    if problem.kind == "code":
        return program_of(text, problem.meta.get("code_prefix", ""))
    return answer_for(text, str(problem.answer) if _gradable(problem) else None, cfg.answer_style)


def score(problem: Problem, text: str, num_tokens: int, cfg: RewardConfig, finish_reason: str = "stop") -> RewardResult:
    """Reward of one completion `text` of `num_tokens` generated tokens (EOS included)."""
    fraction = None
    answer = _answer(problem, text, cfg)
    if _gradable(problem):
        if problem.kind == "code":
            fraction = _code_fraction(problem, text, cfg)
        else:
            fraction = float(math_equal(answer, problem.answer, timeout=cfg.timeout,
                                        imaginary=imaginary_unit(problem.question), question=problem.question))
    return _compose(problem, text, num_tokens, cfg, finish_reason, fraction, answer)


class Generated(Protocol):
    """What grading reads of a completion (`pillion.rollout.engine.Completion` is one)."""

    text: str
    ids: list[int]  # generated token ids, EOS included: their count is the length the shaping sees
    finish_reason: str  # "stop" | "length"


def score_batch(problems: list[Problem], completions: Sequence[Generated], cfg: RewardConfig,
                pool: GradingPool | None = None) -> list[RewardResult]:
    """`score` of each completion against its problem: math answers through `pool` (serially
    without one), code problems in parallel sandboxes (threads that each wait on one sandbox)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    texts = [c.text for c in completions]
    num_tokens = [len(c.ids) for c in completions]
    finish_reasons = [c.finish_reason for c in completions]
    fractions: list[float | None] = [None] * len(texts)
    answers = [_answer(p, t, cfg) for p, t in zip(problems, texts)]
    math_items = [i for i, p in enumerate(problems) if p.kind != "code" and _gradable(p)]
    code_items = [i for i, p in enumerate(problems) if p.kind == "code" and _gradable(p)]
    preds = [answers[i] for i in math_items]
    golds = [problems[i].answer for i in math_items]
    imaginary = [imaginary_unit(problems[i].question) for i in math_items]
    questions = [problems[i].question for i in math_items]
    if pool is not None:
        verdicts = pool.grade(preds, golds, timeout=cfg.timeout, imaginary=imaginary, questions=questions)
    else:
        verdicts = [math_equal(p, g, timeout=cfg.timeout, imaginary=im, question=q)
                    for p, g, im, q in zip(preds, golds, imaginary, questions)]
    for i, verdict in zip(math_items, verdicts):
        fractions[i] = float(verdict)
    if code_items:
        threads = min(len(code_items), len(pool.workers) if pool is not None else (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, threads)) as executor:
            for i, fraction in zip(code_items, executor.map(lambda i: _code_fraction(problems[i], texts[i], cfg),
                                                             code_items)):
                fractions[i] = fraction
    return [_compose(problems[i], texts[i], num_tokens[i], cfg, finish_reasons[i], fractions[i], answers[i])
            for i in range(len(texts))]
