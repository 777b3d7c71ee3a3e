"""SRPO history resampling (docs/algorithms.md §10) and stage schedules."""

import json

import pytest

from pillion.data.history import HistoryResampler, Stage, fit_stages, parse_stages, stage_at
from pillion.data.mixture import Mixture
from pillion.problem import Problem


def problems(*names):
    return [Problem(id=n, question=n, answer="1", source="math") for n in names]


def test_algorithms_md_example():
    # G=4: p1 [1,1,1,1] -> dropped for all later epochs; p2 [1,0,1,0] -> kept; p3 [0,0,0,0] -> kept;
    # p4 was not sampled this epoch -> kept.
    pool = problems("p1", "p2", "p3", "p4")
    history = HistoryResampler()
    history.record("p1", [True, True, True, True])
    history.record("p2", [True, False, True, False])
    history.record("p3", [False, False, False, False])
    kept = history.next_pool(pool)
    assert [p.id for p in kept] == ["p2", "p3", "p4"]

    # epoch 2: p1 is not offered again, even if the caller passes the original pool
    history.record("p3", [True, True, True, True])
    assert [p.id for p in history.next_pool(pool)] == ["p2", "p4"]
    assert history.dropped == {"p1", "p3"}


def test_outcomes_accumulate_within_an_epoch():
    history = HistoryResampler()
    history.record("p", [True, True])
    history.record("p", [True, False])  # sampled twice in the epoch: not all correct
    history.record("q", [True, None])  # an ungraded rollout (None) is not a correct one
    history.record("r", [])  # no rollouts recorded: as if unsampled
    assert [p.id for p in history.next_pool(problems("p", "q", "r"))] == ["p", "q", "r"]
    assert history.outcomes == {}  # a new epoch starts empty


def test_state_dict_roundtrip():
    history = HistoryResampler()
    history.record("p1", [True] * 4)
    history.next_pool(problems("p1", "p2"))
    history.record("p2", [True, False])
    restored = HistoryResampler()
    restored.load_state_dict(json.loads(json.dumps(history.state_dict())))
    assert restored.dropped == {"p1"} and restored.outcomes == {"p2": [True, False]}
    assert not restored.keep(problems("p1")[0]) and restored.keep(problems("p2")[0])


def test_with_a_mixture_epoch():
    pool = problems(*[f"p{i}" for i in range(8)])
    mix = Mixture({"math": pool}, seed=0)
    history = HistoryResampler()
    for p in mix.sample(8):  # one epoch: the even ids are solved every time
        history.record(p.id, [int(p.id[1:]) % 2 == 0] * 4)
    assert mix.drawn("math") == len(mix.pools["math"])
    mix.replace_pool("math", history.next_pool(mix.pools["math"]))
    assert {p.id for p in mix.sample(40)} == {"p1", "p3", "p5", "p7"}


def test_stages():
    stages = parse_stages([{"sources": {"math": 1.0}, "steps": 10},
                           {"sources": {"math": 0.5, "code": 0.5}, "steps": 10}])
    assert stages[1] == Stage(sources={"math": 0.5, "code": 0.5}, steps=10)
    assert stage_at(stages, 0) == (0, stages[0])
    assert stage_at(stages, 9) == (0, stages[0])
    assert stage_at(stages, 10) == (1, stages[1])
    assert stage_at(stages, 19) == (1, stages[1])
    assert stage_at(stages, 25) == (1, stages[1])  # past the schedule: the last stage continues
    with pytest.raises(ValueError):
        stage_at(stages, -1)


@pytest.mark.parametrize("bad", [
    [], [{"sources": {"math": 1.0}}], [{"sources": {"math": 1.0}, "steps": 0}],
    [{"sources": {}, "steps": 3}], [{"sources": {"math": -1.0}, "steps": 3}],
    [{"sources": {"math": 1.0}, "steps": 3, "extra": 1}],
])
def test_bad_stages(bad):
    with pytest.raises(ValueError):
        parse_stages(bad)


def _steps(*steps):
    return [Stage(sources={"a": 1.0}, steps=n) for n in steps]


@pytest.mark.parametrize("schedule,steps,fitted", [
    ((20, 40), 60, (20, 40)),  # fits: unchanged
    ((20, 40), 4, (1, 3)),  # 1.33, 2.67 -> floors 1, 2; the step left goes to the larger remainder (0.67)
    ((20, 40), 7, (2, 5)),  # 2.33, 4.67 -> 2, 4, one left -> 2, 5
    ((20, 40), 120, (40, 80)),  # longer runs stretch the schedule too
    ((1, 100), 3, (1, 2)),  # 0.03, 2.97 -> every stage at least 1: 1, 2
    ((50, 1, 1), 3, (1, 1, 1)),  # 2.88, 0.06, 0.06 -> 2, 1, 1 = 4 > 3: the largest gives one back
    ((10, 10, 10), 4, (2, 1, 1)),  # 1.33 each -> 1, 1, 1; ties go to the earlier stage
])
def test_fit_stages_scales_a_schedule_to_the_steps(schedule, steps, fitted):
    out = fit_stages(_steps(*schedule), steps)
    assert tuple(stage.steps for stage in out) == fitted and sum(fitted) == steps
    assert all(stage.sources == {"a": 1.0} for stage in out)


def test_fit_stages_with_fewer_steps_than_stages_runs_the_first_ones():
    assert [stage.steps for stage in fit_stages(_steps(20, 40, 10), 2)] == [1, 1]  # the third gets no step
