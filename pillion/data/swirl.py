"""SWiRL step samples: a tool-using trajectory cut into one training sample per action.

A trajectory is a response of the engine with tool calls (`rollout/tools.py`): sampled spans
separated by tool outputs, which were spliced in and not sampled (`Completion.sampled` is False
there). Each maximal sampled span is an action: with k tool calls there are k actions that end
in a call's end marker, and a last one that gives the answer (k + 1 in all; a trajectory
stopped by the token limit right after its k-th output has k). Action j becomes one sample:
context = the prompt and every token before the action (earlier actions and tool outputs),
target = the action's tokens. Only the target carries loss: the context is prompt.

As a row (`generic` format, so every reader takes it): `question`, `answer` and the problem's
id as usual, `step_context` = the response text before the action (`render_prompt` appends it
to the rendered prompt, so sampling and training start from the step),
`solution` = the action's text, `continues` = True when a tool output follows the action (no
EOS is trained after it: the model must stop there for the tool, not end its answer), and
`step`, `steps`, `trajectory` to find a sample's place. `pillion sft` trains on such rows with
the loss on the action span only (train/sft.py `examples`). `pillion train` takes them too: its
rollouts start from the step's context and the sampled continuation carries the loss, which is
the action alone for a last step (`continues` false); for a step that continues, everything the
policy samples after it (the later actions too) is scored by the final answer.

Filtering (SWiRL §3, Goldie et al. 2504.04736): the paper keeps steps by a judge of each step
(process filtering) and/or by whether the trajectory reached the right answer (outcome
filtering). `keep` applies the outcome filter and, when given, a step judge: any callable
(problem, context text, action text) -> bool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pillion.data.templates import STEP_CONTEXT
from pillion.problem import Problem

StepJudge = Callable[[Problem, str, str], bool]


@dataclass
class StepSample:
    problem: Problem
    trajectory: int  # which trajectory of the problem
    step: int  # 1-based action index
    steps: int  # actions in the trajectory
    context_ids: list[int]  # response tokens before the action (earlier actions and tool outputs)
    action_ids: list[int]  # the action's tokens (the only loss-bearing span)
    continues: bool  # a tool output follows the action


def action_spans(length: int, sampled: Sequence[bool] | None) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of sampled tokens in a response of `length` tokens
    (sampled None: every token was sampled, one action)."""
    if sampled is None:
        return [(0, length)] if length else []
    spans, start = [], None
    for t in range(length):
        if sampled[t] and start is None:
            start = t
        elif not sampled[t] and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, length))
    return spans


def cut(problem: Problem, trajectory: int, ids: list[int], sampled: Sequence[bool] | None) -> list[StepSample]:
    """One StepSample per action of a trajectory (see the module docstring)."""
    spans = action_spans(len(ids), sampled)
    return [StepSample(problem, trajectory, j + 1, len(spans), ids[:start], ids[start:end], end < len(ids))
            for j, (start, end) in enumerate(spans)]


def keep(samples: list[StepSample], correct: bool | None, decode: Callable[[list[int]], str],
         judge: StepJudge | None = None) -> list[StepSample]:
    """The samples of one trajectory that pass the filters: all of them when the trajectory's
    final answer is right (outcome filter), none otherwise; then, with a `judge`, only the steps
    it accepts (process filter), each judged on its own context and action text."""
    if not correct:
        return []
    if judge is None:
        return samples
    return [s for s in samples if judge(s.problem, decode(s.context_ids), decode(s.action_ids))]


def row(sample: StepSample, decode: Callable[[list[int]], str]) -> dict:
    """The JSON row of a step sample (generic format; the module docstring lists the fields)."""
    p = sample.problem
    prefix = f"{p.source}/"
    uid = p.id[len(prefix):] if p.id.startswith(prefix) else p.id
    return {"id": f"{uid}/t{sample.trajectory}/s{sample.step}", "source": p.source, "question": p.question,
            "answer": p.answer, STEP_CONTEXT: decode(sample.context_ids), "solution": decode(sample.action_ids),
            "continues": sample.continues, "problem_id": p.id, "trajectory": sample.trajectory,
            "step": sample.step, "steps": sample.steps}
