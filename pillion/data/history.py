"""SRPO history resampling and stage schedules (docs/algorithms.md §10; Kwaipilot, 2504.14286).

History Resampling: during an epoch, record for every prompt the correctness of each of its
rollouts. At the epoch end, drop the prompts whose recorded rollouts were all correct (too easy:
no contrastive signal). Prompts with mixed outcomes, prompts with only incorrect outcomes (a
curriculum: they may become solvable) and prompts not sampled in the epoch stay. A dropped
prompt never returns. Example (G=4): p1 [1,1,1,1] dropped; p2 [1,0,1,0] kept; p3 [0,0,0,0] kept.

Use in a loop (the epoch of a pool ends when the mixture has drawn it once through):

    history.record(problem.id, [r.correct for r in results_of_problem])
    if mixture.drawn(name) >= len(mixture.pools[name]):
        mixture.replace_pool(name, history.next_pool(mixture.pools[name]))

On resume, load the history first and rebuild each pool as `[p for p in original if
history.keep(p)]` before `mixture.load_state_dict`: the mixture stores only a fingerprint of
its pools, and this filter gives exactly the pool that `next_pool` left.

Stages: SRPO trains on math first, then math + code. `data.stages` is a list such as
`[{"sources": {"math": 1.0}, "steps": 10}, {"sources": {"math": 0.5, "code": 0.5}, "steps": 10}]`;
`stage_at(stages, step)` says which stage a (0-based) step belongs to, and its `sources` become
the mixture's weights (`Mixture.set_weights`). A stage may instead name a preset,
`{"preset": "concise", "steps": 30}`: then the run is a sequence of phases, each a full RL run
of its preset (pillion/train/phases.py); `parse_stages` checks both forms. A schedule whose
steps do not add up to the run's `steps` is scaled to them (`fit_stages`: every stage keeps at
least one step, the rest in proportion), and the run prints the schedule it follows (with fewer
steps than stages, the stages that get no step are named in that line).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pillion.problem import Problem


class HistoryResampler:
    """Per-prompt outcomes of the current epoch, and the prompts dropped in earlier epochs."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[bool]] = {}  # this epoch: problem id -> rollout correctness
        self.dropped: set[str] = set()  # all epochs so far; absorbing

    def record(self, problem_id: str, corrects: Iterable[bool | None]) -> None:
        """Add rollout outcomes for a prompt. Only `True` counts as correct (None: ungraded)."""
        self.outcomes.setdefault(problem_id, []).extend(c is True for c in corrects)

    def keep(self, problem: Problem) -> bool:
        """False for a prompt dropped in an earlier epoch."""
        return problem.id not in self.dropped

    def next_pool(self, pool: list[Problem]) -> list[Problem]:
        """End the epoch: drop the all-correct prompts for good, return the rest of `pool`.

        A prompt sampled but with no recorded rollouts (an empty list) counts as unsampled.
        """
        for pid, corrects in self.outcomes.items():
            if corrects and all(corrects):
                self.dropped.add(pid)
        self.outcomes = {}
        return [p for p in pool if p.id not in self.dropped]

    def state_dict(self) -> dict[str, Any]:
        return {"outcomes": {k: list(v) for k, v in self.outcomes.items()},
                "dropped": sorted(self.dropped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.outcomes = {k: [bool(c) for c in v] for k, v in state["outcomes"].items()}
        self.dropped = set(state["dropped"])


@dataclass(frozen=True)
class Stage:
    """One stage: source weights for the mixture for `steps` optimizer steps (SRPO), or, with
    `preset`, one phase of a run of phases (pillion/train/phases.py): a full RL run of that
    preset for `steps` steps, with `config` (config keys) applied on top of it."""

    sources: dict[str, float]
    steps: int
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


# Keys a phase may not set: the run decides them (algo = preset, out = a sub-folder, model = the
# previous phase's final checkpoint) and phases do not nest.
PHASE_FORBIDDEN = ("algo", "out", "model", "data.stages")


def parse_stages(items: list[dict[str, Any]], sources: Iterable[str] | None = None, phases: bool = True
                 ) -> list[Stage]:
    """Stages from config dicts: all `{sources: {name: weight}, steps: N}` (names among
    `sources` when given) or, if `phases`, all `{preset: NAME, steps: N, key: value, ...}`.
    A bad entry is a ValueError naming it: data.stages[i]."""
    if not isinstance(items, list) or not items:
        raise ValueError(f"data.stages must be a non-empty list, got {items!r}")
    stages = []
    for i, item in enumerate(items):
        where = f"data.stages[{i}]"
        if not isinstance(item, dict) or "steps" not in item or ("sources" in item) == ("preset" in item):
            raise ValueError(f"{where} must be {{sources: {{name: weight}}, steps: N}} or {{preset: NAME, steps: N, "
                             f"...config keys}}, got {item!r}")
        steps = item["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            raise ValueError(f"{where}.steps must be a positive int, got {steps!r}")
        if "preset" in item:
            if not phases:
                raise ValueError(f"{where} names a preset: a run of phases is started by `pillion train` "
                                 "(pillion.train.phases.run_phases), not by train()")
            stages.append(_phase(where, item))
            continue
        if set(item) != {"sources", "steps"}:
            raise ValueError(f"{where} must have exactly the keys 'sources' and 'steps', got {item!r}")
        weights = item["sources"]
        if (not isinstance(weights, dict) or not weights
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights.values())
                or sum(weights.values()) <= 0):
            raise ValueError(f"{where}.sources must map names to weights >= 0 with a positive sum, got {weights!r}")
        unknown = sorted(set(map(str, weights)) - set(sources)) if sources is not None else []
        if unknown:
            raise ValueError(f"{where}.sources names {unknown}, which are not in data.sources "
                             f"({', '.join(sorted(sources))})")
        stages.append(Stage(sources={str(k): float(w) for k, w in weights.items()}, steps=steps))
    if len({stage.preset is None for stage in stages}) > 1:
        raise ValueError("data.stages mixes stages with sources (one run, SRPO) and stages with a preset (a run of "
                         "phases); use one kind")
    return stages


def _phase(where: str, item: dict[str, Any]) -> Stage:
    preset = item["preset"]
    if not isinstance(preset, str) or not preset:
        raise ValueError(f"{where}.preset must be a preset name, got {preset!r}")
    config = {str(k): v for k, v in item.items() if k not in ("preset", "steps")}
    for key, value in config.items():
        nested = [f"{key}.{k}" for k in value] if isinstance(value, dict) else []
        bad = [k for k in (key, *nested) if k in PHASE_FORBIDDEN]
        if bad:
            raise ValueError(f"{where} cannot set {bad[0]!r}: a phase runs its preset (algo) in a sub-folder of the "
                             "run (out), starting from the previous phase's final model (the first: model=), "
                             "and phases do not nest")
    return Stage(sources={}, steps=item["steps"], preset=preset, config=config)


def fit_stages(stages: list[Stage], steps: int) -> list[Stage]:
    """The schedule scaled to `steps` steps in all: stage i gets floor(steps_i * steps / total)
    steps, at least 1, and the steps left over go one each to the stages with the largest
    remainders (ties: the earlier stage). Unchanged when it fits; with fewer steps than stages,
    the first `steps` stages get one step each and the others none (the caller says so).
    Example: 20 + 40 over steps=4 -> 1.33, 2.67 -> 1 + 2, one left, to the second stage
    (remainder 0.67 > 0.33): 1 + 3."""
    total = sum(stage.steps for stage in stages)
    if total == steps:
        return stages
    if steps < len(stages):
        return [replace(stage, steps=1) for stage in stages[:steps]]
    exact = [stage.steps * steps / total for stage in stages]
    fitted = [max(1, math.floor(x)) for x in exact]
    while sum(fitted) > steps:  # minimums of 1 took more than the floors: the largest stage gives back
        fitted[max(range(len(fitted)), key=lambda i: fitted[i])] -= 1
    by_remainder = sorted(range(len(stages)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for i in by_remainder[: steps - sum(fitted)]:
        fitted[i] += 1
    return [replace(stage, steps=n) for stage, n in zip(stages, fitted)]


def stage_at(stages: list[Stage], step: int) -> tuple[int, Stage]:
    """(index, stage) for 0-based `step`; steps past the schedule stay in the last stage."""
    if not stages:
        raise ValueError("no stages")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    end = 0
    for i, stage in enumerate(stages):
        end += stage.steps
        if step < end:
            return i, stage
    return len(stages) - 1, stages[-1]
