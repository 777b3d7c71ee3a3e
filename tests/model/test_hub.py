"""Hugging Face Hub ids where a model folder is expected (model/hub.py), without the network: a
Hub cache is built on disk in the layout huggingface_hub reads (models--org--name/refs/main
holding a commit, snapshots/<commit>/ the files), HF_HOME points at it, HF_HUB_OFFLINE=1, and
any socket connection fails the test."""

import json
import shutil
import socket

import pytest
import yaml

from pillion.cli import main
from pillion.model import hub, lora
from pillion.model.checkpoint import DEFAULT_MODEL, load_model, resolve_model, save_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRAIN = ["steps=1", "prompts_per_step=2", "group_size=2", "max_new_tokens=8", "data.heldout_size=2", "eval.k=1",
         "eval.max_new_tokens=8", "data.synthetic_size=50"]
EVAL = ["--data", "synthetic:2", "--k", "1", "--max-new-tokens", "4"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """org/tiny (the shipped tiny model) at COMMIT in a Hub cache under a fresh HF_HOME, offline."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(DEFAULT_MODEL, repo / "snapshots" / COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a test reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return repo / "snapshots" / COMMIT


def test_which_names_are_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.is_hub_id("Qwen/Qwen2.5-0.5B-Instruct") and hub.is_hub_id("org/name@v1.0")
    assert not hub.is_hub_id("default") and not hub.is_hub_id("/abs/path") and not hub.is_hub_id("a/b/c")
    assert not hub.is_hub_id("./org/name") and not hub.is_hub_id("../x")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not hub.is_hub_id("org/name")  # an existing folder is a folder
    snapshot = tmp_path / "models--org--name" / "snapshots" / COMMIT
    assert hub.snapshot_id(snapshot) == ("org/name", COMMIT) and hub.snapshot_id(tmp_path) is None
    assert hub.pinned("org/x", snapshot) == f"org/x@{COMMIT}" and hub.pinned("org/x", tmp_path) is None


def test_a_cached_id_resolves_offline_to_its_snapshot(hub_cache):
    assert resolve_model("org/tiny") == hub_cache
    assert resolve_model(f"org/tiny@{COMMIT}") == hub_cache


def test_train_from_a_hub_id_records_the_commit(hub_cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "model=org/tiny", f"out={run}", *TRAIN]) == 0
    assert f"model org/tiny: Hugging Face Hub revision {COMMIT}" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == f"org/tiny@{COMMIT}"
    assert json.loads((run / "report.json").read_text())["model"] == f"org/tiny@{COMMIT}"
    # a resume loads the same commit from the saved config
    assert main(["train", f"out={run}", "--resume", "steps=2"]) == 0


def test_eval_from_a_hub_id(hub_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "org/tiny", *EVAL, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == f"org/tiny@{COMMIT}" and result["n"] == 2
    assert (tmp_path / "runs" / "eval-tiny-synthetic-2" / "eval.json").is_file()
    assert main(["export", "org/tiny", str(tmp_path / "copy")]) == 0  # and the other commands that take a model
    assert (tmp_path / "copy" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["train", "eval", "logprob-check"])
def test_an_uncached_id_offline_is_one_line_naming_it_and_what_to_do(hub_cache, tmp_path, capsys, command):
    argv = {"train": ["train", "model=org/missing", f"out={tmp_path / 'run'}", *TRAIN],
            "eval": ["eval", "--model", "org/missing", *EVAL],
            "logprob-check": ["logprob-check", "--model", "org/missing"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"pillion {command}: model org/missing: no such folder here, and not in the Hugging Face "
                          f"cache {hub_cache.parents[2]} while HF_HUB_OFFLINE=1: download it once with network "
                          "access (unset HF_HUB_OFFLINE), or give a local model folder"), err
    assert not (tmp_path / "run").exists()


def test_adapters_on_a_hub_base_name_it_as_peft_does(hub_cache, tmp_path):
    model = load_model(resolve_model("org/tiny"))
    lora.apply_lora(model, 2, 4.0, ["q_proj"])
    save_model(model, tmp_path / "adapter", source=hub_cache)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/tiny", COMMIT)
    again = load_model(tmp_path / "adapter")  # the base found again in the cache, offline
    assert lora.has_adapters(again)
