"""Run folders never mix, metrics survive a kill mid-write, over-long prompts are dropped at load."""

import json
import logging

import pytest

from pillion.model.tiny import make_tokenizer
from pillion.problem import Problem
from pillion.train import common
from pillion.train.common import RunError


def test_plan_run_dir_refuses_to_mix_runs(tmp_path):
    fresh = tmp_path / "new"
    assert common.plan_run_dir(str(fresh), "grpo", resume=False, overwrite=False) == fresh
    assert not fresh.exists()  # planning creates nothing

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo: grpo\n")
    with pytest.raises(RunError, match=r"already holds a run; continue it with --resume, or start over with"):
        common.plan_run_dir(str(run), "grpo", resume=False, overwrite=False)
    assert common.plan_run_dir(str(run), "grpo", resume=False, overwrite=True) == run
    assert common.plan_run_dir(str(run), "grpo", resume=True, overwrite=False) == run

    with pytest.raises(RunError, match=r"nothing to resume in .*typo: no run there"):
        common.plan_run_dir(str(tmp_path / "typo"), "grpo", resume=True, overwrite=False)
    with pytest.raises(RunError, match=r"--resume needs out=DIR"):
        common.plan_run_dir(None, "grpo", resume=True, overwrite=False)

    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # never deleted, even with --overwrite
        with pytest.raises(RunError, match=r"holds other files, not a pillion run"):
            common.plan_run_dir(str(other), "grpo", resume=False, overwrite=overwrite)

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(RunError, match=r"cannot create the run folder .*file.txt is not a writable folder"):
        common.plan_run_dir(str(blocker / "run"), "grpo", resume=False, overwrite=False)


def test_overwrite_deletes_only_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    common.create_run_dir(run, overwrite=True)
    assert run.is_dir() and not any(run.iterdir())


def test_default_run_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = common.default_run_dir("grpo")
    first.mkdir(parents=True)
    second = common.default_run_dir("grpo")
    assert second != first and not second.exists()


def test_metrics_truncate_drops_later_steps_and_a_partial_last_line(tmp_path, caplog):
    log = common.MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write({"step": step, "reward": step / 10})
    with log.path.open("a") as f:
        f.write('{"step": 4, "rew')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        log.truncate_after(2)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    assert "partial last line" in caplog.text

    log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RunError, match=r"metrics.jsonl, line 2: not a JSON record"):
        log.truncate_after(2)


def test_over_long_prompts_are_dropped_with_a_counted_warning(caplog):
    tok = make_tokenizer()  # one token per character
    problems = [Problem(id=f"p/{i}", question="7" * n, answer="7") for i, n in enumerate([10, 200, 50, 300, 400, 500])]
    with caplog.at_level(logging.WARNING):
        kept = common.drop_long_prompts(problems, "arith", tok, "qa", limit=100)
    # "Q: " + question + "\nA:" is 6 characters more than the question.
    assert [p.id for p in kept] == ["p/0", "p/2"]
    assert "arith: dropped 4 of 6 problems" in caplog.text
    assert "p/1 (206 tokens), p/3 (306 tokens), p/4 (406 tokens), ..." in caplog.text


def test_prompt_budget_is_the_context_less_the_generation_budget():
    class Data:
        max_prompt_tokens = None

    assert common.prompt_budget(Data, 4096, 48) == 4048
    Data.max_prompt_tokens = 100
    assert common.prompt_budget(Data, 4096, 48) == 100
    Data.max_prompt_tokens = None
    with pytest.raises(RunError, match=r"no room for a prompt: the model's context is 32 tokens"):
        common.prompt_budget(Data, 32, 48)
