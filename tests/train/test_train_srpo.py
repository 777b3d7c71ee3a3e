"""SRPO's shape on the default: arithmetic, then arithmetic + code; both held-out sets reported."""

import json

import pytest

from pillion import config as C
from pillion.train import collect, common, rl


def test_heldout_accepts_one_spec_or_named_specs():
    single = C.resolve(C.TrainConfig, overrides=["data.heldout_size=3"])
    assert list(common.heldout_sets(single.data, 0)) == ["heldout"]
    named = C.resolve(C.TrainConfig, overrides=[
        "data.heldout_size=3", "data.heldout={arith: 'synthetic:1', code: 'synthetic_code:1'}"])
    sets = common.heldout_sets(named.data, 0)
    assert list(sets) == ["arith", "code"] and [len(s) for s in sets.values()] == [3, 3]
    assert {p.kind for p in sets["arith"]} == {"math"} and {p.kind for p in sets["code"]} == {"code"}
    assert all(p.meta["split"] == "test" for s in sets.values() for p in s)
    # load_data (SFT's held-out set) is every set, one after the other
    assert [p.id for p in common.load_data(named.data, 0)[1]] == [p.id for s in sets.values() for p in s]
    with pytest.raises(C.ConfigError, match="data.heldout"):
        C.resolve(C.TrainConfig, overrides=["data.heldout=[1, 2]"])


@pytest.fixture
def kinds_per_step(monkeypatch) -> list:
    """The problem kinds ("math", "code") of each generation call of a run, in order."""
    kinds = []
    real = collect.generate_and_score

    def recording(engine, problems, cfg, seed, pool, **kwargs):
        kinds.append({p.kind for p in problems})
        return real(engine, problems, cfg, seed, pool, **kwargs)

    monkeypatch.setattr(collect, "generate_and_score", recording)
    return kinds


@pytest.mark.slow
def test_srpo_runs_math_then_math_and_code_and_reports_both_sets(tmp_path, kinds_per_step):
    cfg = C.resolve(C.TrainConfig, overrides=[
        "algo=srpo", f"out={tmp_path}", "steps=2", "prompts_per_step=8", "group_size=2", "micro_batch=16",
        "data.heldout_size=4", "eval.k=1", "data.synthetic_size=200", "save_every=100",
        "data.stages=[{sources: {arith: 1.0}, steps: 1}, {sources: {arith: 0.5, code: 0.5}, steps: 1}]"])
    report = rl.train(cfg)
    assert kinds_per_step == [{"math"}, {"math", "code"}]  # stage 1: arithmetic only; stage 2: both
    on_disk = json.loads((tmp_path / "report.json").read_text())
    for when in ("before", "after"):
        for name in ("arith", "code"):
            assert 0.0 <= on_disk[f"pass1_{when}/{name}"] <= 1.0
            assert on_disk[f"eval_{when}/{name}"]["n"] == 4
        assert on_disk[f"pass1_{when}"] == on_disk[f"pass1_{when}/arith"]  # the first set keeps the old key
    assert report["n_heldout"] == 4


@pytest.mark.slow
def test_srpo_with_fewer_steps_scales_its_schedule_and_reports_code(tmp_path, kinds_per_step, capsys):
    """algo=srpo steps=4: the 20 + 40 step schedule becomes 1 + 3 (printed), so the code stage runs;
    report.md shows the code held-out set beside arithmetic."""
    from pillion.cli import main

    assert main(["train", "algo=srpo", "steps=4", f"out={tmp_path}", "prompts_per_step=8", "group_size=2",
                 "micro_batch=16", "data.heldout_size=4", "eval.k=1", "data.synthetic_size=200"]) == 0
    assert "data.stages: the schedule's 20 + 40 steps do not add up to steps=4; scaled to 1 + 3" in \
        capsys.readouterr().out
    assert kinds_per_step[0] == {"math"} and "code" in set().union(*kinds_per_step[1:])
    report = (tmp_path / "report.md").read_text()
    assert "| code | 4 |" in report and "### Evaluation after training: code" in report
