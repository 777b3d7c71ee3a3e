"""Online DPO through the RL loop on the shipped tiny model: pairs, tied groups, the reference
refresh, and its bad input as one line with nothing written."""

import json
import math
import re

import pytest

from pillion import config as C
from pillion.cli import main
from pillion.train import rl, state

SMALL = ["steps=3", "prompts_per_step=8", "group_size=6", "max_new_tokens=24", "micro_batch=8",
         "data.heldout_size=8", "eval.k=1", "eval.max_new_tokens=24", "save_every=100", "data.synthetic_size=400"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("refresh", [0, 1])
def test_dpo_pairs_groups_and_refreshes_the_reference(tmp_path, refresh):
    cfg = C.resolve(C.TrainConfig, overrides=["algo=dpo", f"out={tmp_path}", f"dpo.ref_update_every={refresh}",
                                              "lr=1e-3", *SMALL])
    rl.train(cfg)
    rows = metrics(tmp_path)
    assert all(r["kept_groups"] + r["tied_groups"] == 8 for r in rows)  # every group: a pair, or tied
    updates = [r for r in rows if "dpo_loss" in r]  # a step whose groups all tied makes no update
    assert len(updates) >= 2 and all(r["skipped_updates"] == 0 for r in updates)
    # the first update: the policy is still the reference, so every margin is 0 and the loss is log 2
    assert updates[0]["dpo_margin"] == pytest.approx(0.0, abs=1e-5)
    assert updates[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    if refresh:  # the reference takes the policy after every update: margins start at 0 again
        assert all(r["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6) for r in updates)
    else:  # the reference stays the start: the first update moved the margins
        assert abs(updates[1]["dpo_margin"]) > 1e-4

TRAIN = ["steps=1", "prompts_per_step=2", "group_size=2", "max_new_tokens=8", "data.heldout_size=2", "eval.k=1"]
ROWS = {
    "dpo with group_size=1": (lambda t: ["algo=dpo", "group_size=1"],
                              r"config key 'group_size': adv=dpo pairs the best and worst .* got 1"),
    "dpo with two updates per rollout": (lambda t: ["algo=dpo", "ppo_epochs=2"], r"config key 'ppo_epochs'"),
    "a judge folder that is not a model": (
        lambda t: [f"reward.judge.model={(t / 'notamodel').mkdir() or t / 'notamodel'}"],
        r"config key 'reward.judge.model': model folder .*notamodel has no config.json"),
    "a judge template without slot b": (lambda t: ["reward.judge.template='{principle}: {a} or?'"],
                                        r"config key 'reward.judge.template': .* has no \{b\} slot"),
    "pairwise without a judge": (lambda t: ["algo=pairwise"], r"config key 'reward.judge.model': algo=pairwise"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys, row):
    keys, message = ROWS[row]
    argv = ["train", f"out={tmp_path / 'run'}", *TRAIN, *keys(tmp_path)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("pillion train: "), err
    assert re.search(message, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_a_resumed_run_takes_the_refreshed_reference(tmp_path, monkeypatch):
    """save_every a multiple of dpo.ref_update_every: the checkpoint's policy is the round's
    reference, so a run stopped after step 3 and resumed from step 2 logs what the straight run logs."""
    from pillion.train.update import TIMING_FIELDS

    def cfg(out):
        return C.resolve(C.TrainConfig, overrides=["algo=dpo", f"out={out}", "dpo.ref_update_every=2", "lr=1e-3",
                                                   *SMALL, "steps=4", "save_every=2"])

    rl.train(cfg(tmp_path / "straight"))
    real, calls = rl.rollout, {"n": 0}

    def stop_at_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rl, "rollout", stop_at_third_step)
    with pytest.raises(state.RunInterrupted):
        rl.train(cfg(tmp_path / "stopped"))
    monkeypatch.setattr(rl, "rollout", real)
    rl.train(cfg(tmp_path / "stopped"), resume=True)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]

    straight = strip(metrics(tmp_path / "straight"))
    assert any("dpo_loss" in r for r in straight[2:])  # the resumed steps train
    assert strip(metrics(tmp_path / "stopped")) == straight
