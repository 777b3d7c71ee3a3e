"""Supervised warm-up: the loss falls, only response tokens are trained, the result loads."""

import json

from transformers import AutoModelForCausalLM

from pillion import config as C
from pillion.cli import main
from pillion.model.tiny import make_tokenizer
from pillion.problem import Problem
from pillion.train.sft import examples


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
