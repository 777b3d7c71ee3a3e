"""SWiRL data: tool-using trajectories rolled out, graded, cut into step samples and filtered.

    pillion data swirl --model DIR --data train.jsonl --out steps.jsonl --max-calls 2 --k 4
    pillion sft model=DIR data.sources='{steps: steps.jsonl}'    # the loss on each step's action only

For each problem `k` trajectories are sampled with the Python tool (`rollout/tools.py`, at most
`max_calls` calls each), each is graded on its final answer, cut into one sample per action
(`pillion/data/swirl.py`) and kept by the outcome filter (and a step judge, when one is given).
The rows of a batch of problems are appended to the output together; a problem none of whose
trajectories is kept is listed in `<out stem>.dropped.jsonl`, so that a resumed run skips it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pillion.data import swirl
from pillion.data.templates import render_prompt
from pillion.problem import Problem
from pillion.rewards.shaping import RewardConfig, score_batch
from pillion.rollout.engine import SamplingParams


@dataclass
class Outcome:
    """One problem's trajectories: how many, how many right, their tool calls, the kept samples."""

    problem: Problem
    trajectories: int
    correct: int
    tool_calls: list[int]
    kept: list[swirl.StepSample]


def step_samples(engine, problems: list[Problem], params: SamplingParams, template: str, reward_cfg: RewardConfig,
                 pool=None, judge: swirl.StepJudge | None = None) -> list[Outcome]:
    """`params.n` trajectories per problem with the engine's tools, cut and filtered."""
    prompts = [render_prompt(p, template, engine.tokenizer) for p in problems]
    completions = engine.generate(prompts, params)  # prompt-major: n rows per problem
    results = score_batch([problems[c.prompt_index] for c in completions], completions, reward_cfg, pool)
    decode = lambda ids: engine.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    outcomes = [Outcome(p, 0, 0, [], []) for p in problems]
    for c, result in zip(completions, results):
        outcome = outcomes[c.prompt_index]
        outcome.trajectories += 1
        outcome.correct += bool(result.correct)
        outcome.tool_calls.append(c.tool_calls)
        sampled = None if c.sampled is None else c.sampled.tolist()
        samples = swirl.cut(outcome.problem, c.sample_index, c.ids, sampled)
        outcome.kept += swirl.keep(samples, result.correct, decode, judge)
    return outcomes
