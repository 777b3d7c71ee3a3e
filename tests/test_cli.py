"""Every command answers a user's mistake in one line, `pillion <command>: <message>`, exit 2, no
traceback and nothing written (pillion/cli.py): one case per row of the table of commands that
used to print a traceback or do something harmful, plus the error path's own rules."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pillion import cli
from pillion.cli import main
from pillion.model import lora
from pillion.model.checkpoint import DEFAULT_MODEL, load_model, read_recipe, save_model, write_recipe

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["steps=2", "prompts_per_step=2", "group_size=2", "max_new_tokens=8", "data.heldout_size=2", "eval.k=1",
         "eval.max_new_tokens=8", "data.synthetic_size=50"]
EVAL = ["--data", "synthetic:2", "--k", "1", "--max-new-tokens", "4"]


def model_copy(tmp_path, edit, name="model"):
    folder = tmp_path / name
    shutil.copytree(DEFAULT_MODEL, folder)
    edit(folder)
    return folder


def set_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def no_tokenizer(folder):
    for path in folder.glob("tokenizer*"):
        path.unlink()


def a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    return tmp_path / "file.txt"


def lora_checkpoint(tmp_path, name="adapter", recipe=None):
    """A LoRA run's checkpoint: a PEFT adapter folder on the shipped model (adapters non-zero)."""
    model = load_model(DEFAULT_MODEL)
    params = lora.apply_lora(model, 4, 8.0, ["q_proj", "v_proj"])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.01)
    save_model(model, tmp_path / name, source=DEFAULT_MODEL)
    write_recipe(tmp_path / name, recipe or {"template": "qa", "answer_style": "boxed"})
    return tmp_path / name


# command line -> (what the one line after "pillion <command>: " must say, a regex)
ROWS = {
    # logprob-check on a broken model folder: the CheckpointError's message, without its traceback
    "logprob-check, no config.json": (
        lambda t: ["logprob-check", "--model", str(model_copy(t, lambda f: (f / "config.json").unlink()))],
        r"model folder .*model has no config.json"),
    "logprob-check, no tokenizer": (lambda t: ["logprob-check", "--model", str(model_copy(t, no_tokenizer))],
                                    r"model: no tokenizer.json or tokenizer_config.json"),
    "logprob-check, unknown architecture": (
        lambda t: ["logprob-check", "--model",
                   str(model_copy(t, lambda f: set_config(f, architectures=["GPT2LMHeadModel"])))],
        r"config.json field 'architectures' is \['GPT2LMHeadModel'\]"),
    "logprob-check, random bytes as weights": (
        lambda t: ["logprob-check", "--model",
                   str(model_copy(t, lambda f: (f / "model.safetensors").write_bytes(os.urandom(4096))))],
        r"model.safetensors: not a readable safetensors file"),
    # options out of range: refused before any work, as config keys are
    "eval --k 0": (lambda t: ["eval", "--model", "default", *EVAL, "--k", "0"],
                   r"argument --k: 0 is out of range; expected >= 1"),
    "eval --k -2": (lambda t: ["eval", "--model", "default", *EVAL, "--k", "-2"],
                    r"argument --k: -2 is out of range; expected >= 1"),
    "eval --max-new-tokens 0": (lambda t: ["eval", "--model", "default", *EVAL, "--max-new-tokens", "0"],
                                r"argument --max-new-tokens: 0 is out of range; expected >= 1"),
    "eval --limit -5": (lambda t: ["eval", "--model", "default", *EVAL, "--limit", "-5"],
                        r"argument --limit: -5 is out of range; expected >= 1"),
    "eval --top-p 1.5": (lambda t: ["eval", "--model", "default", *EVAL, "--top-p", "1.5"],
                         r"argument --top-p: 1.5 is out of range; expected a value in \(0, 1\]"),
    "logprob-check --tools -1": (lambda t: ["logprob-check", "--model", "default", "--tools", "-1"],
                                 r"argument --tools: -1 is out of range; expected >= 0"),
    # outputs where nothing can be written (a folder under a file: an OS error on every machine, root too)
    "eval --out under a file": (lambda t: ["eval", "--model", "default", *EVAL, "--out", str(a_file(t) / "out")],
                                r"cannot write the output folder .*file.txt/out: .*file.txt is not a writable folder"),
    "export into a folder under a file": (lambda t: ["export", "default", str(a_file(t) / "out")],
                                          r"cannot write the output folder .*file.txt/out"),
    "data difficulty --out under a file": (
        lambda t: ["data", "difficulty", str(write_rows(t)), "--out", str(a_file(t) / "o.jsonl")],
        r"cannot write the output file .*file.txt/o.jsonl"),
    # config values that used to be ValueError tracebacks
    "train lora.targets=[foo_proj]": (lambda t: ["train", f"out={t / 'run'}", "lora.rank=4", "lora.targets=[foo_proj]",
                                                 *TRAIN], r"config key 'lora.targets': \['foo_proj'\] not among"),
    "train data.level_weights naming an empty level": (
        lambda t: ["train", f"out={t / 'run'}", "data.level_weights={7: 1}", *TRAIN],
        r"config key 'data.level_weights': source 'arith' has no problems in a level with positive weight .*"
        r"\(its levels: 1, 2\)"),
    "train a synthetic level 9": (
        lambda t: ["train", f"out={t / 'run'}", "data.sources={a: 'synthetic:9'}", *TRAIN],
        r"config key 'data.sources.a': 'synthetic:9' names level 9, which synthetic does not have"),
    "train a held-out synthetic level 9": (
        lambda t: ["train", f"out={t / 'run'}", "data.heldout=synthetic:9", *TRAIN],
        r"config key 'data.heldout': 'synthetic:9' names level 9"),
    "train lora.rank=-1": (lambda t: ["train", f"out={t / 'run'}", "lora.rank=-1", *TRAIN],
                           r"config key 'lora.rank': -1 is out of range; expected >= 0"),
    "train lora.alpha=-1": (lambda t: ["train", f"out={t / 'run'}", "lora.rank=4", "lora.alpha=-1", *TRAIN],
                            r"config key 'lora.alpha': -1.0 is out of range; expected > 0"),
    # export never destroys its source nor an existing folder
    "export DST = SRC": (lambda t: ["export", str(lora_checkpoint(t)), str(t / "adapter"), "--merge"],
                         r"adapter is the checkpoint, which an export never overwrites; export into another folder"),
    "export DST inside SRC": (
        lambda t: ["export", str(lora_checkpoint(t)), str(t / "adapter" / "x"), "--merge", "--overwrite"],
        r"adapter/x lies inside the checkpoint \(.*adapter\), which an export never overwrites"),
    "export DST = an existing model folder": (
        lambda t: ["export", str(lora_checkpoint(t)), str(model_copy(t, lambda f: None, "other")), "--merge"],
        r"other already exists; choose another folder, or pass --overwrite to replace it"),
    # a data file whose only row is too long for the model: every problem dropped
    "eval, a 5 MB row only": (lambda t: ["eval", "--model", "default", "--data", str(write_rows(t, big=True)),
                                         "--k", "1", "--max-new-tokens", "4"], r"no problems to evaluate in"),
    "data inspect, a missing file": (lambda t: ["data", "inspect", str(t / "missing.jsonl")],
                                     r"missing.jsonl: no such file"),
}


def write_rows(tmp_path, big=False):
    rows = [{"question": "x" * 5_000_000, "answer": "1"}] if big else [{"question": "1+1", "answer": "2"}]
    path = tmp_path / ("big.jsonl" if big else "rows.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row", list(ROWS))
def test_a_user_error_is_one_line_with_exit_2(tmp_path, capsys, row):
    argv, message = ROWS[row]
    argv = argv(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    captured = capsys.readouterr()
    command = f"pillion {argv[0]}" + (f" {argv[1]}" if argv[0] == "data" else "")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith(f"{command}: ") and re.search(message, captured.err), captured.err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="a machine with the devices asked for")
@pytest.mark.parametrize("argv,message", [
    (["eval", "--model", "default", *EVAL, "--device", "cuda:1"], r"pillion eval: --device: 'cuda:1' requested "
                                                                  r"but this machine has \d CUDA device"),
    (["train", "algo=ppo", "critic.device=cuda:1", *TRAIN], r"pillion train: config key 'critic.device': "
                                                            r"'cuda:1' requested but this machine has \d CUDA"),
    (["logprob-check", "--model", "default", "--device", "cuda:1"], r"pillion logprob-check: --device: 'cuda:1'"),
])
def test_a_device_the_machine_lacks_is_one_line_before_work(tmp_path, capsys, monkeypatch, argv, message):
    import pillion.model.checkpoint as checkpoint

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the device was checked")

    monkeypatch.setattr(checkpoint, "load_model", no_loading)
    assert main([*argv, *([f"out={tmp_path / 'run'}"] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(message, err), err
    assert not (tmp_path / "run").exists()


def test_eval_reads_a_lora_checkpoint_and_a_run_folder_as_train_does(tmp_path, capsys):
    adapter = lora_checkpoint(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("algo: grpo\n")
    shutil.copytree(adapter, run / "checkpoints" / "step-000002")
    (run / "checkpoints" / "step-000002" / "trainer_state.pt").write_bytes(b"")
    shutil.copytree(DEFAULT_MODEL, run / "checkpoints" / "step-000004.tmp")  # an unfinished write: not taken
    results = []
    for model in (adapter, run):
        assert main(["eval", "--model", str(model), *EVAL, "--out", str(tmp_path / f"eval-{model.name}"),
                     "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    # the run folder's newest complete checkpoint is the adapter folder: the same samples, the same record
    assert results[0]["samples"] == results[1]["samples"] and results[0]["template"] == "qa"
    assert results[1]["model"] == str(run / "checkpoints" / "step-000002")
    assert results[0]["base_model_hash"] == results[1]["base_model_hash"]  # the adapters' base, hashed


def test_eval_drops_a_prompt_longer_than_the_context_with_a_warning(tmp_path, capsys, caplog):
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps({"question": "x" * 5_000_000, "answer": "1"}) + "\n" +
                    json.dumps({"question": "What is 1+1?", "answer": "2"}) + "\n")
    assert main(["eval", "--model", "default", "--data", str(data), "--k", "1", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1
    assert re.search(r"dropped 1 of 2 problems whose prompt exceeds .*generic/1 \(5000\d+ tokens\)", caplog.text)


def test_resume_refuses_a_changed_configuration_naming_the_keys(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"out={run}", "--print-config", *TRAIN]) == 0
    run.mkdir()
    (run / "config.yaml").write_text(capsys.readouterr().out)
    for changed in (["model=other"], ["algo=dapo"], ["model=other", "lr=0.5"]):
        assert main(["train", f"out={run}", "--resume", *changed]) == 2
        err = capsys.readouterr().err
        keys = [c.split("=")[0] for c in changed]
        assert err.count("\n") == 1 and err.startswith(f"pillion train: --resume keeps the run's configuration, and "
                                                       f"{', '.join(keys)} would change"), err
        assert " ".join(f"--allow-change {k}" for k in keys) in err
    # what may change on resume, and what --allow-change lets change
    assert main(["train", f"out={run}", "--resume", "steps=9", "log.tensorboard=false", "--print-config"]) == 0
    assert "steps: 9" in capsys.readouterr().out
    assert main(["train", f"out={run}", "--resume", "lr=0.5", "--allow-change", "lr", "--print-config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    assert main(["train", f"out={run}", "--resume", "--allow-change", "nope", "--print-config"]) == 2
    assert capsys.readouterr().err == "pillion train: --allow-change nope: not a config key\n"


def test_export_carries_the_template_record_and_replaces_only_when_told(tmp_path, capsys):
    adapter = lora_checkpoint(tmp_path, recipe={"template": "qa", "answer_style": "boxed"})
    out = tmp_path / "merged"
    assert main(["export", str(adapter), str(out), "--merge"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert read_recipe(out) == {"template": "qa", "answer_style": "boxed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]  # no merged.tmp left
    # evaluated as its run did: the run's template and answer style, not plain
    assert main(["eval", "--model", str(out), *EVAL, "--out", str(tmp_path / "e"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["template"], result["answer_style"]) == ("qa", "boxed")
    # an existing folder is replaced with --overwrite only, and only once the new one is complete
    weights = (out / "model.safetensors").read_bytes()
    assert main(["export", str(adapter), str(out), "--merge"]) == 2
    assert main(["export", str(adapter), str(out), "--merge", "--overwrite", "--dtype", "bfloat16"]) == 0
    assert (out / "model.safetensors").read_bytes() != weights and read_recipe(out)["template"] == "qa"


def test_export_never_overwrites_the_base_of_a_lora_checkpoint(tmp_path, capsys):
    base = model_copy(tmp_path, lambda f: None, "base")
    model = load_model(base)
    lora.apply_lora(model, 2, 4.0, ["q_proj"])
    save_model(model, tmp_path / "adapter", source=base)
    before = (base / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "adapter"), str(base), "--merge", "--overwrite"]) == 2
    assert "is the base model of" in capsys.readouterr().err
    assert (base / "model.safetensors").read_bytes() == before


def test_difficulty_writes_beside_its_file(tmp_path, capsys, monkeypatch):
    import pillion.eval.select as select

    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(select, "pass_counts", lambda engine, problems, *a, **k: [1] * len(problems))
    assert main(["data", "difficulty", str(data), "--k", "1"]) == 0
    assert (tmp_path / "data" / "gsm.difficulty.jsonl").is_file() and not (tmp_path / "gsm.difficulty.jsonl").exists()


def test_an_os_error_is_one_line_only_about_a_path_the_user_gave(tmp_path):
    given = tmp_path / "given" / "out"
    error = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(tmp_path / "given"))
    assert cli.user_message(error, ["eval", "--out", str(given)]) == f"{tmp_path / 'given'}: Not a directory"
    assert cli.user_message(error, ["eval", f"--out={given}"]) is not None
    elsewhere = FileNotFoundError(errno.ENOENT, "No such file or directory", "/usr/lib/pillion-internal.bin")
    assert cli.user_message(elsewhere, ["eval", "--out", str(given)]) is None  # a bug: keeps its traceback
    assert cli.user_message(ValueError("x"), []) is None
    full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    full.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert cli.user_message(full, []) == "no space left on device while writing a file"


def test_train_and_sft_take_options_with_values_among_key_values():
    parser = cli.build_parser("train")
    assert cli.options_last(parser, "train", ["out=x", "--resume", "--allow-change", "lr", "lr=2"]) == [
        "train", "out=x", "lr=2", "--resume", "--allow-change", "lr"]
    assert cli.options_last(parser, "train", ["--allow-change=lr", "out=x"]) == ["train", "out=x", "--allow-change=lr"]


@pytest.mark.slow
def test_under_torchrun_a_user_error_is_one_line_once_and_exit_2(tmp_path):
    """Two gloo ranks refuse prompts_per_step=3: each rank exits 2 from the entry point, the line is
    printed once, and no rank's traceback reaches torchrun's report (its own summary of the
    failed job remains: the launcher, not pillion, prints it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pillion",
                           "train", "prompts_per_step=3", f"out={tmp_path / 'run'}"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    line = "pillion train: config key 'prompts_per_step': 3 is not divisible by the 2 ranks"
    assert proc.stderr.count(line) == 1, proc.stderr
    assert re.search(r"exitcode\s*:\s*2", proc.stderr), proc.stderr  # the ranks' own exit status
    assert "ParallelError" not in proc.stderr and "pillion/train" not in proc.stderr  # no rank traceback
    assert not (tmp_path / "run").exists()
