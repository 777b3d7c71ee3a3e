"""Checkpoints are atomic: a kill at any point of `state.save` never leaves one that `--resume`
picks up half-written, and the resumed run logs exactly what an uninterrupted run logs."""

import json

import pytest
import torch

from pillion import config as C
from pillion.cli import main
from pillion.train import rl, state
from pillion.train.update import TIMING_FIELDS

SMALL = ["steps=4", "save_every=2", "prompts_per_step=4", "group_size=4", "max_new_tokens=24", "micro_batch=8",
         "data.heldout_size=4", "eval.k=1", "eval.max_new_tokens=16", "data.synthetic_size=400"]
TIMING = TIMING_FIELDS


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the trainer catches it."""


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    rl.train(C.resolve(C.TrainConfig, overrides=[f"out={out}", *SMALL]))
    return rows(out)


def test_latest_ignores_unfinished_folders_and_stale_ones_are_cleaned(tmp_path):
    done = state.checkpoint_dir(tmp_path, 2)
    done.mkdir(parents=True)
    (done / "trainer_state.pt").write_bytes(b"x")
    # The reported failure: a kill once step-N.tmp/trainer_state.pt exists (even empty).
    tmp = state.checkpoint_dir(tmp_path, 4).with_name("step-000004.tmp")
    tmp.mkdir()
    (tmp / "trainer_state.pt").write_bytes(b"")
    no_state = state.checkpoint_dir(tmp_path, 6)  # renamed folders always hold it; be strict anyway
    no_state.mkdir()
    assert state.latest(tmp_path) == done
    assert state.clean_stale(tmp_path) == [tmp] and not tmp.exists()
    # Steps compare as numbers, not strings (step-1000000 after step-999999).
    big = tmp_path / "checkpoints" / "step-1000000"
    big.mkdir()
    (big / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / "step-999999").mkdir()
    assert state.latest(tmp_path) == big


def test_a_kill_while_pruning_leaves_nothing_that_stays(tmp_path, monkeypatch):
    # Seen in benchmarks/faults.py: a kill during the delete of an old checkpoint left step-000003
    # without its trainer_state.pt, never resumed from and never removed.
    for step in (1, 2):
        folder = state.checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / "trainer_state.pt").write_bytes(b"x")
    tmp = state.checkpoint_dir(tmp_path, 3).with_name("step-000003.tmp")
    tmp.mkdir()
    (tmp / "trainer_state.pt").write_bytes(b"x")
    real = state.shutil.rmtree

    def killed_mid_delete(path, ignore_errors=False):
        if path.exists():  # the renamed old checkpoint: its trainer state goes first, then the kill
            (path / "trainer_state.pt").unlink()
            raise Killed
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(state.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(Killed):
        state.commit(tmp_path, tmp, state.checkpoint_dir(tmp_path, 3), keep=2)
    monkeypatch.setattr(state.shutil, "rmtree", real)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000001.tmp", "step-000002", "step-000003"]
    assert state.latest(tmp_path) == state.checkpoint_dir(tmp_path, 3)
    assert [p.name for p in state.clean_stale(tmp_path)] == ["step-000001.tmp"]


def test_unreadable_trainer_state_is_named(tmp_path):
    folder = state.checkpoint_dir(tmp_path, 2)
    folder.mkdir(parents=True)
    (folder / "trainer_state.pt").write_bytes(b"\x80\x02truncated")
    with pytest.raises(state.CheckpointError, match=r"step-000002/trainer_state.pt: cannot read"):
        state.load_trainer_state(folder)


def _raise_at(monkeypatch, target, name, at_step=4):
    """Make `target.name` raise Killed during the save of step `at_step` (after the real call
    for 'after:' points), so the kill lands between two writes of that save."""
    after = name.startswith("after:")
    name = name.removeprefix("after:")
    real = getattr(target, name)
    calls = {"saving": False}
    real_save = state.save

    def save(run_dir, step, *args, **kwargs):
        calls["saving"] = step == at_step
        return real_save(run_dir, step, *args, **kwargs)

    def fake(*args, **kwargs):
        if calls["saving"] and not after:
            raise Killed(name)
        result = real(*args, **kwargs)
        if calls["saving"]:
            raise Killed(name)
        return result

    monkeypatch.setattr(state, "save", save)
    monkeypatch.setattr(rl.state, "save", save)
    monkeypatch.setattr(target, name, fake)


KILL_POINTS = [
    (state, "save_model"),  # before anything of step 4 is written
    (state, "after:save_model"),  # weights written, no trainer state yet
    (torch, "after:save"),  # trainer_state.pt written, nothing fsynced
    (state, "after:fsync_path"),  # the first file fsynced
    (state.shutil, "rmtree"),  # about to replace an older copy / prune
    (state, "_complete"),  # renamed into place, not pruned yet
]


@pytest.mark.slow
@pytest.mark.parametrize("target,name", KILL_POINTS, ids=[n for _, n in KILL_POINTS])
def test_a_kill_at_each_point_of_save_resumes_to_the_same_run(tmp_path, monkeypatch, straight, target, name):
    out = tmp_path / "run"
    _raise_at(monkeypatch, target, name)
    with pytest.raises(Killed):
        rl.train(C.resolve(C.TrainConfig, overrides=[f"out={out}", *SMALL]))
    monkeypatch.undo()
    assert state.latest(out) in (state.checkpoint_dir(out, 2), state.checkpoint_dir(out, 4))
    assert main(["train", f"out={out}", "--resume"]) == 0
    assert rows(out) == straight
    assert not list((out / "checkpoints").glob("*.tmp"))
