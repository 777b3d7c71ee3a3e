"""The thread default (pillion/threads.py): what `threads=auto` picks, and that a run records it."""

from __future__ import annotations

import json

import pytest
import torch

from pillion import threads

CPU = torch.device("cpu")


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)


@pytest.mark.parametrize("busy, expected", [
    (0.0, 2),   # idle: both cores
    (0.4, 2),   # less than half a core taken: still free
    (0.6, 1),   # a core more than half busy is taken
    (1.0, 1),   # one busy process: one thread
    (2.0, 1),   # both taken: never fewer than one
    (5.0, 1),
])
def test_auto_counts_the_cores_other_work_leaves_free(two_cores, busy, expected):
    choice = threads.choose("auto", CPU, busy=busy)
    assert choice.threads == expected
    assert f"{busy:.1f} busy" in choice.reason


def test_a_number_and_omp_num_threads_are_taken_as_they_are(two_cores, monkeypatch):
    assert threads.choose(3, CPU, busy=2.0).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    choice = threads.choose("auto", CPU, busy=0.0)
    assert (choice.threads, choice.reason) == (4, "OMP_NUM_THREADS")


def test_ranks_on_one_machine_share_its_cores(two_cores, monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.choose("auto", CPU, busy=0.0).threads == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.choose("auto", CPU, busy=0.0).threads == 1


def test_cuda_keeps_torchs_default(two_cores):
    assert threads.choose("auto", torch.device("cuda"), busy=2.0).threads == torch.get_num_threads()


def test_busy_cores_sees_a_busy_process_and_leaves_this_one_out():
    """One spinning child is about one busy core; this process spinning too is not counted."""
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.5)
        busy = threads.busy_cores(window=0.5)
    finally:
        spin.kill()
        spin.wait()
    # the child holds one core; other work on the machine can add to it, never take from it
    assert busy >= 0.6


def test_threads_key_is_checked(tmp_path):
    from pillion import config as config_lib

    with pytest.raises(config_lib.ConfigError, match="'threads'.*>= 1"):
        config_lib.resolve(config_lib.TrainConfig, None, ["threads=0"])
    with pytest.raises(config_lib.ConfigError, match="'threads': 'x' is not an int or auto"):
        config_lib.resolve(config_lib.TrainConfig, None, ["threads=x"])
    assert config_lib.resolve(config_lib.SFTConfig, None, ["threads=2"], preset_key=None).threads == 2


def test_a_run_prints_and_records_its_choice(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from pillion import config as config_lib
    from pillion.train.rl import train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)  # one core taken by other work
    before = torch.get_num_threads()
    try:
        cfg = config_lib.resolve(config_lib.TrainConfig, None, [
            f"model={tiny_checkpoint('qwen2')}", f"out={tmp_path / 'run'}", "steps=1", "prompts_per_step=2",
            "group_size=2", "max_new_tokens=4", "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=4",
            "threads=auto"])
        train(cfg)
        first = capsys.readouterr().out.splitlines()[0]
        assert first.startswith("threads: 1 (auto: 2 cores, 1.0 busy with other work)")
        assert json.loads((tmp_path / "run" / "report.json").read_text())["threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
