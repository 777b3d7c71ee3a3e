"""Every user mistake in `pillion train` / `pillion sft` is one line naming the key, file or row,
with exit code 2, no traceback and no run folder; Ctrl-C is one line with the resume command."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from pillion.cli import main
from pillion.model.checkpoint import DEFAULT_MODEL

COMMON = ["steps=2", "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=8", "data.synthetic_size=50"]
SMALL = [*COMMON, "prompts_per_step=2", "group_size=2", "max_new_tokens=8"]
SIZES = {"train": SMALL, "sft": [*COMMON, "batch_size=2"]}


def model_copy(tmp_path, edit):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    edit(folder)
    return f"model={folder}"


def truncate_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def set_config(folder, **fields):
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **fields}))


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD_ROW = '{"question": "1+1", "answer": "2", "solution": "1+1=2"}\n'


def source(tmp_path, name, content):
    return f"data.sources={{x: {write(tmp_path, name, content)}}}"


CASES = {
    "malformed yaml": (lambda t: [str(write(t, "bad.yaml", "steps: 3\nloss:\n  agg: [token_mean\n"))],
                       r"bad.yaml:4:1: malformed YAML"),
    "bad value": (lambda t: ["loss.kl_in=rewards"], r"config key 'loss.kl_in': 'rewards' is not one of loss, reward"),
    "group given a scalar": (lambda t: ["loss=3"], r"config key 'loss': 3 is not one of ppo_clip, nll, reinforce"),
    "zero temperature": (lambda t: ["temperature=0"], r"config key 'temperature': 0.0 is out of range; expected > 0"),
    "data row": (lambda t: [source(t, "d.jsonl", GOOD_ROW + '{"question": "", "answer": "3"}\n')],
                 r"d.jsonl, row 2: field 'question': missing or empty"),
    "binary data": (lambda t: [source(t, "b.jsonl", bytes([0xFF, 0xFE, 0, 1, 2]) + b"\n")],
                    r"b.jsonl, row 1: not UTF-8 text \(byte 0xff at column 1\)"),
    "lone surrogate": (lambda t: [source(t, "s.jsonl", '{"question": "a \\ud800", "answer": "1"}\n')],
                       r"s.jsonl, row 1: field 'question': not valid Unicode text \(lone surrogate"),
    "corrupt weights": (lambda t: [model_copy(t, truncate_weights)],
                        r"model.safetensors: not a readable safetensors file"),
    "malformed config.json": (lambda t: [model_copy(t, lambda f: (f / "config.json").write_text("{oops"))],
                              r"config.json: malformed JSON"),
    "unsupported model": (lambda t: [model_copy(t, lambda f: set_config(f, architectures=["GPT2LMHeadModel"]))],
                          r"config.json field 'architectures' is \['GPT2LMHeadModel'\]; supported"),
    "missing model": (lambda t: [f"model={t / 'nowhere'}"], r"model folder .*nowhere has no config.json"),
    "out under a file": (lambda t: [f"out={write(t, 'f.txt', 'x') / 'run'}"],
                         r"cannot create the run folder .*f.txt is not a writable folder"),
}


@pytest.mark.parametrize("command", ["train", "sft"])
@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_and_leave_nothing(tmp_path, capsys, command, case):
    make, pattern = CASES[case]
    args = make(tmp_path)
    if command == "sft" and case in ("bad value", "group given a scalar", "zero temperature"):
        pytest.skip("an RL-only key")
    out = tmp_path / "run"
    config_file = [a for a in args if "=" not in a]
    code = main([command, *config_file, f"out={out}", *SIZES[command], *[a for a in args if "=" in a]])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"pillion {command}: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()  # no run folder for a run that could not start


def test_run_folders_are_never_reused_by_accident(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"out={out}", *SMALL]) == 0
    assert main(["train", f"out={out}", *SMALL]) == 2
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert main(["train", f"out={tmp_path / 'typo'}", "--resume"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert main(["train", f"out={out}", *SMALL, "steps=1", "--overwrite"]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_without_a_checkpoint_starts_the_run_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", f"out={out}", *SMALL, "save_every=100", "steps=1"]) == 0
    shutil.rmtree(out / "checkpoints")
    (out / "metrics.jsonl").write_text('{"step": 1, "reward": 9.0}\n{"step": 2, "re')
    assert main(["train", f"out={out}", "--resume"]) == 0
    assert "no checkpoint yet in" in capsys.readouterr().out
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1] and steps[0]["reward"] != 9.0  # redone, not appended


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_machine_without_it(tmp_path, capsys):
    assert main(["train", "device=cuda", f"out={tmp_path / 'run'}", *SMALL]) == 2
    assert "config key 'device': 'cuda' requested but this machine has 0 CUDA device(s)" in capsys.readouterr().err


def test_ctrl_c_is_one_line_with_the_resume_command_and_the_checkpoint_survives(tmp_path):
    """A real SIGINT to the whole process group (trainer and grading workers), as a terminal sends."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pillion", "train", f"out={out}", *SMALL, "steps=1000", "save_every=2",
         "reward.answer_style=auto"],  # auto: some answers reach the symbolic grading worker
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pillion train: interrupted at step ")
    assert lines[0].endswith(f"resume with: pillion train out={out} --resume")
    assert main(["train", f"out={out}", "steps=4", "--resume"]) == 0
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


def test_train_help_names_every_preset(capsys):
    """The help's preset list is the configs folder, so a new preset cannot be left out of it."""
    from pillion.cli import build_parser
    from pillion.config import PRESET_DIR

    with pytest.raises(SystemExit):
        build_parser("train").parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"dpo", "pairwise", "grpo"} <= set(presets)
    assert f"Presets (algo=NAME): {', '.join(presets)}." in text
