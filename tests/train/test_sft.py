"""Supervised warm-up: the loss falls, only response tokens are trained, the result loads, and
every SFTConfig key is used (optimizer, trackers, level weights) or refused as unknown."""

import json
import sys
import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from pillion import config as C
from pillion.cli import main
from pillion.model.tiny import make_tokenizer
from pillion.problem import Problem
from pillion.train import sft as sft_module
from pillion.train.sft import examples

# A small fresh model and short run: about 5 s each on one core.
QUICK = ["init=tiny", "tiny.hidden_size=64", "tiny.num_layers=2", "tiny.intermediate_size=128", "steps=2",
         "batch_size=4", "data.heldout_size=2", "eval.k=1", "eval.max_new_tokens=8", "data.synthetic_size=50"]


def test_sft_loss_falls_and_writes_a_loadable_model(tmp_path):
    code = main(["sft", "init=tiny", "tiny.hidden_size=64", "tiny.num_layers=2", "tiny.intermediate_size=128",
                 "steps=40", "batch_size=16", "lr=3e-3", f"out={tmp_path}", "data.heldout_size=4", "eval.k=1",
                 "eval.max_new_tokens=16", "data.synthetic_size=500"])
    assert code == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # the byte-level loss drops by > 40%
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_heldout"] == 4 and 0.0 <= report["pass@1"] <= 1.0
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "final"))
    assert hf.config.hidden_size == 64


def test_examples_put_the_loss_on_the_solution_and_eos_only():
    tok = make_tokenizer()
    p = Problem(id="a", question="What is 2+3?", answer="5", solution="2+3=5. \\boxed{5}")
    (prompt, response), = examples([p], tok, "qa", tok.eos_token_id)
    assert tok.decode(prompt) == "Q: What is 2+3?\nA:"
    assert tok.decode(response[:-1]) == "2+3=5. \\boxed{5}" and response[-1] == tok.eos_token_id


def test_sft_config_has_no_preset_and_checks_keys():
    cfg = C.resolve(C.SFTConfig, overrides=["steps=3", "tiny.num_layers=1"], preset_key=None)
    assert cfg.steps == 3 and cfg.tiny.num_layers == 1


@pytest.mark.parametrize("key", ["data.select.size=4", "data.stages=[]", "data.history_resampling=true",
                                 "prompts_per_step=4", "lora.rank=4"])
def test_sft_refuses_the_keys_of_rl_only(key):
    name = key.split("=")[0]
    with pytest.raises(C.ConfigError, match=rf"unknown config key '{name}'"):
        C.resolve(C.SFTConfig, overrides=[key], preset_key=None)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_optim_muon_trains_with_muon(tmp_path, monkeypatch):
    made, real = [], sft_module.make_optimizer

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(sft_module, "make_optimizer", recording)
    assert main(["sft", *QUICK, "optim=muon", f"out={tmp_path / 'muon'}"]) == 0
    assert main(["sft", *QUICK, f"out={tmp_path / 'adamw'}"]) == 0
    muon, adamw = made
    # Muon on the hidden matrices, AdamW on embeddings, head and norms; the default is AdamW alone
    assert [type(o) for o in muon.optimizers] == [torch.optim.Muon, torch.optim.AdamW]
    assert isinstance(adamw, torch.optim.AdamW)
    a, b = _losses(tmp_path / "muon"), _losses(tmp_path / "adamw")
    assert a[0] == b[0]  # step 1's loss is the same model on the same batch, before any update
    assert abs(a[1] - b[1]) > 1e-6  # step 2's differs: the first updates differ


def test_sft_copies_metrics_to_the_trackers_log_turns_on(tmp_path, monkeypatch):
    written, closed = [], []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's (not installed here)
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            closed.append(self.log_dir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    assert main(["sft", *QUICK, "log.tensorboard=true", f"out={tmp_path}"]) == 0
    assert [(step, value) for tag, value, step in written if tag == "loss"] == list(enumerate(_losses(tmp_path), 1))
    assert closed == [str(tmp_path / "tb")]


def test_sft_draws_only_the_levels_level_weights_keep(tmp_path, monkeypatch):
    levels = []

    def recording(problems, *args):
        levels.extend(p.level for p in problems)
        return examples(problems, *args)

    monkeypatch.setattr(sft_module, "examples", recording)
    assert main(["sft", *QUICK, "steps=3", "batch_size=8", "data.level_weights={2: 1}", f"out={tmp_path / 'two'}"]) == 0
    assert levels == [2] * 24
    levels.clear()
    assert main(["sft", *QUICK, "steps=3", "batch_size=8", f"out={tmp_path / 'both'}"]) == 0
    assert sorted(set(levels)) == [1, 2]  # without level weights, "synthetic:1,2" draws both levels
