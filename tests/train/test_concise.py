"""The concise-reasoning phase: data.select in the trainer, stages that name a preset (a run of
phases), their errors, and resume across phases."""

import json
from pathlib import Path

import pytest

from pillion import config as C
from pillion.cli import main
from pillion.train import collect, phases, rl, state

SMALL = ["prompts_per_step=4", "group_size=4", "max_new_tokens=24", "micro_batch=16", "data.heldout_size=8",
         "eval.k=1", "eval.max_new_tokens=24", "data.synthetic_size=400", "save_every=1"]
# the selection on the small run: 2 problems the starting policy solves 1..3 times of 4
SELECT = ["data.select.size=2", "data.select.k=4", "data.select.max_candidates=64"]
TIMING = {"tokens_per_s", "step_time"}  # wall-clock fields differ between runs (and every time_*)


def metrics(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING and not k.startswith("time_")}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stages,message", [
    ("[{preset: grpo, steps: 2}, {sources: {arith: 1}, steps: 2}]", r"mixes stages with sources .* use one kind"),
    ("[{preset: nope, steps: 2}]", r"data.stages\[0\].preset: unknown preset algo='nope'; presets: concise,"),
    ("[{preset: grpo, steps: 0}]", r"data.stages\[0\].steps must be a positive int, got 0"),
    ("[{preset: grpo}]", r"data.stages\[0\] must be \{sources: \{name: weight\}, steps: N\} or \{preset: NAME"),
    ("[{preset: grpo, steps: 2, model: x}]", r"data.stages\[0\] cannot set 'model'"),
    ("[{preset: grpo, steps: 2, data: {stages: []}}]", r"data.stages\[0\] cannot set 'data.stages'"),
    ("[{sources: {math: 1}, steps: 2}]", r"data.stages\[0\].sources names \['math'\], which are not in data.sources"),
    ("[]", None),  # no stages: a plain run
])
def test_stage_entries_are_checked_when_the_config_resolves(stages, message):
    if message is None:
        assert C.resolve(C.TrainConfig, overrides=[f"data.stages={stages}"]).data.stages == []
        return
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(C.TrainConfig, overrides=[f"data.stages={stages}"])


def test_the_length_term_spans_the_generation_budget_without_overlong_shaping():
    from pillion.problem import Problem
    from pillion.rewards import score

    problem = Problem(id="p", question="What is 2+2?", answer="4")
    right = "2+2=4. \\boxed{4}"
    # Overlong off: the term reaches -length_weight at max_new_tokens (64): 16 tokens -> -0.5 * 16/64.
    cfg = C.resolve(C.TrainConfig, overrides=["reward.length_weight=0.5", "max_new_tokens=64"])
    assert score(problem, right, 16, collect.length_scaled(cfg)).parts["length"] == pytest.approx(-0.125)
    assert score(problem, right, 16, cfg.reward).parts["length"] == pytest.approx(-0.5 * 16 / 20480)  # the raw config
    # Overlong on: its l_max (48) is the scale, as the shaping docstring defines.
    cfg = C.resolve(C.TrainConfig, overrides=["reward.length_weight=0.5", "max_new_tokens=64",
                                              "reward.overlong.enable=true", "reward.overlong.l_max=48",
                                              "reward.overlong.l_cache=8"])
    assert score(problem, right, 16, collect.length_scaled(cfg)).parts["length"] == pytest.approx(-0.5 * 16 / 48)
    plain = C.resolve(C.TrainConfig)
    assert collect.length_scaled(plain) is plain.reward  # no length term: the config as it is


def test_select_excludes_what_names_sources():
    with pytest.raises(C.ConfigError, match="config key 'data.select.size': the selected problems form one pool"):
        C.resolve(C.TrainConfig, overrides=["data.select.size=4", "data.weights={arith: 1}"])
    with pytest.raises(C.ConfigError, match="data.select.size"):
        C.resolve(C.TrainConfig, overrides=["algo=srpo", "data.select.size=4"])  # srpo's stages name sources


def test_phases_are_planned_from_their_presets_with_the_shared_keys(tmp_path):
    cfg = C.resolve(C.TrainConfig, overrides=[
        "seed=3", "data.heldout_size=16", "data.stages=[{preset: grpo, steps: 3}, {preset: concise, steps: 2, lr: 2e-5,"
        " reward: {correct: 1.0}}, {preset: srpo, steps: 1}]"])
    assert phases.is_phased(cfg)
    first, second, third = phases.plan_phases(cfg, None, ["seed=3", "data.heldout_size=16"], tmp_path)
    grpo, concise = C.resolve(C.TrainConfig), C.resolve(C.TrainConfig, overrides=["algo=concise"])
    assert (first.algo, first.steps, first.model, first.out) == ("grpo", 3, "default", str(tmp_path / "1-grpo"))
    assert first.lr == grpo.lr and first.loss == grpo.loss and first.data.select.size == 0
    # the concise preset, then the shared keys, then the stage's own keys; model: phase 1's last checkpoint
    assert (second.algo, second.steps, second.out) == ("concise", 2, str(tmp_path / "2-concise"))
    assert second.model == str(tmp_path / "1-grpo" / "checkpoints" / "step-000003")
    assert second.adv == concise.adv and second.data.select == concise.data.select
    assert second.lr == 2e-5 and second.reward.correct == 1.0 and second.reward.incorrect == concise.reward.incorrect
    assert all(c.seed == 3 and c.data.heldout_size == 16 for c in (first, second, third))
    # a phase's own data.stages is its preset's (srpo's source stages), never the run's
    assert first.data.stages == second.data.stages == [] and third.data.stages == C.resolve(
        C.TrainConfig, overrides=["algo=srpo"]).data.stages
    with pytest.raises(C.ConfigError, match=r"data.stages\[1\] \(concise\): unknown config key 'lrr'"):
        phases.plan_phases(C.resolve(C.TrainConfig, overrides=[
            "data.stages=[{preset: grpo, steps: 3}, {preset: concise, steps: 2, lrr: 1}]"]), None, [], tmp_path)


def test_train_refuses_preset_stages(tmp_path):
    cfg = C.resolve(C.TrainConfig, overrides=[f"out={tmp_path}", "data.stages=[{preset: grpo, steps: 1}]"])
    with pytest.raises(ValueError, match=r"data.stages\[0\] names a preset: a run of phases is started by"):
        rl.train(cfg)


def test_select_picks_the_training_problems_and_resume_keeps_them(tmp_path, monkeypatch):
    """data.select on the shipped model: rollouts only see the selected problems; a run stopped
    after step 1 and resumed selects the same ones and logs the same metrics as one straight run."""
    seen = []
    real = collect.generate_and_score

    def recording(engine, problems, cfg, seed, pool, **kwargs):
        seen.extend(p.id for p in problems)
        return real(engine, problems, cfg, seed, pool, **kwargs)

    monkeypatch.setattr(collect, "generate_and_score", recording)
    args = ["algo=dr_grpo", "steps=2", *SMALL, *SELECT]  # no critic, no reference: the cheapest preset
    report = rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'straight'}", *args]))
    chosen = report["select"]["rates"]
    assert report["select"]["selected"] == 2 == len(chosen) and report["select"]["wanted"] == 2
    assert all(0.1 <= rate <= 0.9 for rate in chosen.values())
    assert set(seen) == set(chosen)  # 2 steps x 4 prompts, all drawn from the 2 selected problems
    assert report["select"]["tested"] == sum(report["select"]["histogram"].values())

    calls = {"n": 0}

    def crash_on_second_step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return rl_rollout(*a, **kw)

    rl_rollout = rl.rollout
    monkeypatch.setattr(rl, "rollout", crash_on_second_step)
    with pytest.raises(state.RunInterrupted, match="interrupted at step 1"):
        rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'crashed'}", *args]))
    monkeypatch.setattr(rl, "rollout", rl_rollout)
    resumed = rl.train(C.resolve(C.TrainConfig, overrides=[f"out={tmp_path / 'crashed'}", *args]), resume=True)
    assert resumed["select"] == report["select"]
    assert metrics(tmp_path / "crashed") == metrics(tmp_path / "straight")
    assert resumed["pass1_after"] == report["pass1_after"]


@pytest.mark.slow
def test_a_run_of_phases_resumes_like_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """grpo (2 steps) then concise (2 steps) through the CLI; Ctrl-C in the concise phase; resume."""
    # the concise stage's own selection keys: any 2 problems (rates at temperature 0.6 after 2
    # GRPO steps are 0 or 1; the selection itself is tested above)
    stages = ("data.stages=[{preset: grpo, steps: 2}, {preset: concise, steps: 2, data: {select: {size: 2, k: 2, "
              "min_pass: 0.0, max_pass: 1.0}}}]")
    assert main(["train", f"out={tmp_path / 'straight'}", stages, *SMALL]) == 0
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())
    assert [p["preset"] for p in straight["phases"]] == ["grpo", "concise"]
    grpo, concise = straight["phases"]
    # the concise phase starts from grpo's final model, and reuses grpo's final evaluation
    saved = C.load_yaml(tmp_path / "straight" / "2-concise" / "config.yaml")
    assert saved["model"] == str(tmp_path / "straight" / "1-grpo" / "checkpoints" / "step-000002")
    assert concise["pass1_before"] == grpo["pass1_after"] and concise["length_before"] == grpo["length_after"]
    assert concise["length_change"] == pytest.approx(concise["length_after"] / concise["length_before"] - 1)
    assert straight["pass1_before"] == grpo["pass1_before"] and straight["pass1_after"] == concise["pass1_after"]
    assert concise["select"]["selected"] == 2
    rows = metrics(tmp_path / "straight")
    assert [(r["step"], r["phase"]) for r in rows] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert "## Phases" in (tmp_path / "straight" / "report.md").read_text()

    real, calls = rl.rollout, {"n": 0}

    def crash_in_phase_two(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # phase 2, step 2 (phase 2 saved step 1)
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(rl, "rollout", crash_in_phase_two)
    assert main(["train", f"out={tmp_path / 'crashed'}", stages, *SMALL]) == 130
    err = capsys.readouterr().err
    assert "phase 2 (concise) interrupted at step 1 (last checkpoint: " in err
    assert err.rstrip().endswith(f"resume with: pillion train out={tmp_path / 'crashed'} --resume")
    monkeypatch.setattr(rl, "rollout", real)
    assert not (tmp_path / "crashed" / "report.json").exists()
    assert main(["train", f"out={tmp_path / 'crashed'}", "seed=1", "--resume"]) == 2  # phases resume as planned
    assert main(["train", f"out={tmp_path / 'crashed'}", "--resume"]) == 0
    resumed = json.loads((tmp_path / "crashed" / "report.json").read_text())
    for a, b in zip(straight["phases"], resumed["phases"]):
        assert {k: v for k, v in a.items() if k != "run_dir"} == {k: v for k, v in b.items() if k != "run_dir"}
    assert metrics(tmp_path / "crashed") == rows


@pytest.mark.slow
def test_concise_phase_shortens_the_verbose_model(tmp_path, capsys):
    """The issue's must-show on the shipped verbose model (answers often end in a redundant
    self-check, docs/algorithms.md §11): GRPO 30 steps, then the concise phase 40 steps, the
    preset's own selection (64 problems solved 4-7 times of 8). Asserted: GRPO learns, the concise
    phase selects its 64 problems from GRPO's final model, cuts the mean held-out response length
    by at least 20% and keeps held-out pass@1 within 2 points below (a gain is allowed).
    On the shipped default model there is nothing to cut (22.83 -> 22.84 tokens, §11)."""
    stages = "data.stages=[{preset: grpo, steps: 30}, {preset: concise, steps: 40}]"
    budget = ["max_new_tokens=96", "eval.max_new_tokens=96"]  # room for the checks: lengths are not cut
    assert main(["train", f"out={tmp_path}", "model=verbose", *budget, stages]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    grpo, concise = report["phases"]
    with capsys.disabled():  # the figures, for the record
        print(f"\nverbose: grpo pass@1 {grpo['pass1_before']:.3f} -> {grpo['pass1_after']:.3f}, length "
              f"{grpo['length_before']:.2f} -> {grpo['length_after']:.2f}; concise pass@1 {concise['pass1_before']:.3f}"
              f" -> {concise['pass1_after']:.3f}, length {concise['length_before']:.2f} -> "
              f"{concise['length_after']:.2f} ({concise['length_change']:+.1%})")
    assert grpo["pass1_after"] > grpo["pass1_before"] + 0.2
    assert concise["select"]["selected"] == concise["select"]["wanted"] == 64
    assert concise["pass1_before"] == grpo["pass1_after"] and concise["length_before"] == grpo["length_after"]
    assert concise["length_change"] <= -0.20, concise
    assert concise["pass1_change"] >= -0.02, concise
