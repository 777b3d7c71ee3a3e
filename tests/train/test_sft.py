"""Supervised warm-up: the loss falls, only response tokens are trained, the result loads, and
every SFTConfig key is used (optimizer, trackers, level weights) or refused as unknown."""

import json
import math
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
from pillion.train.optim import Muon
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
    cfg = C.resolve(C.SFTConfig, overrides=["steps=3", "init=tiny", "tiny.num_layers=1"], preset_key=None)
    assert cfg.steps == 3 and cfg.tiny.num_layers == 1


@pytest.mark.parametrize("key", ["data.select.size=4", "data.stages=[]", "data.history_resampling=true",
                                 "prompts_per_step=4", "lora.rank=4"])
def test_sft_refuses_the_keys_of_rl_only(key):
    name = key.split("=")[0]
    with pytest.raises(C.ConfigError, match=rf"unknown config key '{name}'"):
        C.resolve(C.SFTConfig, overrides=[key], preset_key=None)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_with_heldout_size_0_skips_the_evaluation(tmp_path, capsys):
    assert main(["sft", *QUICK, "data.heldout_size=0", f"out={tmp_path}"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pass@1"] is None and report["n_heldout"] == 0 and "eval" not in report
    assert (tmp_path / "final" / "config.json").is_file()
    assert "no held-out evaluation (data.heldout_size=0)" in capsys.readouterr().out


def test_a_skipped_non_finite_sft_step_checkpoints_the_last_update_and_resumes_alike(tmp_path, monkeypatch):
    """Step 2's gradient norm is non-finite: no update, and its checkpoint holds step 1's update
    (AdamW's step count 1, step 3's 2) with the sampler past step 2's batch, so a resume from it
    logs the uninterrupted step 3. (RL does not checkpoint such a step; here it is the same state.)"""
    import shutil

    real, calls = sft_module.parallel.clip_grad_norm, []

    def second_is_nan(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.tensor(float("nan")) if len(calls) == 2 else norm

    monkeypatch.setattr(sft_module.parallel, "clip_grad_norm", second_is_nan)
    args = [*[a for a in QUICK if not a.startswith("steps=")], "steps=3", "save_every=1"]
    assert main(["sft", *args, f"out={tmp_path / 'run'}"]) == 0
    monkeypatch.setattr(sft_module.parallel, "clip_grad_norm", real)
    steps = {n: torch.load(tmp_path / "run" / "checkpoints" / f"step-00000{n}" / "trainer_state.pt",
                           weights_only=False)["optimizer"]["state"][0]["step"] for n in (2, 3)}
    assert steps == {2: 1, 3: 2}
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000003")
    assert main(["sft", f"out={tmp_path / 'resumed'}", "--resume"]) == 0
    rows = [[json.loads(line)[k] for k in ("step", "loss", "grad_norm")]
            for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    again = [[json.loads(line)[k] for k in ("step", "loss", "grad_norm")]
             for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert math.isnan(rows[1][2]) and rows[2] == again[2]


def test_sft_stops_after_max_bad_steps_non_finite_updates_in_a_row(tmp_path, monkeypatch, capsys):
    """As `pillion train`: steps 2 and 3 non-finite with max_bad_steps=2 -> one line, exit 1, no
    checkpoint of step 3 (the newest, step 2's, holds step 1's update: a skipped step leaves the
    weights as they were), the skipped steps logged; a single bad step
    between good ones is skipped and the run goes on (streak reset)."""
    real, calls = sft_module.parallel.clip_grad_norm, []

    def bad_from_second(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.tensor(float("inf")) if len(calls) >= 2 else norm

    monkeypatch.setattr(sft_module.parallel, "clip_grad_norm", bad_from_second)
    args = [*[a for a in QUICK if not a.startswith("steps=")], "steps=5", "save_every=1", "max_bad_steps=2"]
    assert main(["sft", *args, f"out={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pillion sft: stopping at step 3: 2 updates in a row had a non-finite loss or gradient;")
    assert err[-1].endswith("step-000002 (lower lr, or raise max_bad_steps)") and len(calls) == 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_updates"]) for r in rows] == [(1, 0), (2, 1), (3, 1)]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]

    calls.clear()
    monkeypatch.setattr(sft_module.parallel, "clip_grad_norm",
                        lambda params, max_norm: calls.append(1) or (torch.tensor(float("nan")) if len(calls) in (2, 4)
                                                                      else real(params, max_norm)))
    assert main(["sft", *args, f"out={tmp_path / 'alternating'}"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "alternating" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 1, 0, 1, 0]


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
    assert [type(o) for o in muon.optimizers] == [Muon, torch.optim.AdamW]
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


# ---- checkpoints and --resume ----------------------------------------------------------------

def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "step_time"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _report(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    report.pop("model")  # the folder's own path
    return report


def test_an_interrupted_sft_resumes_where_the_message_says_and_logs_the_uninterrupted_run(tmp_path, capsys,
                                                                                           monkeypatch):
    """Ctrl-C at step 4 of 5 (checkpoints every 2 steps): exit 130 and one line naming the last
    checkpoint and the command; that command, run over what a kill -9 inside the next checkpoint
    write would also leave (a step-*.tmp folder, a half-written metrics line), logs the same
    losses, gradient norms and learning rates as the uninterrupted run and writes the same model."""
    args = [*QUICK, "steps=5", "save_every=2", "lr_schedule=cosine", "warmup_steps=1"]
    assert main(["sft", *args, f"out={tmp_path / 'full'}"]) == 0
    full = _rows(tmp_path / "full")
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5] and len({r["loss"] for r in full}) == 5
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["step-000004", "step-000005"]

    out, calls, real = tmp_path / "cut", [], sft_module.examples

    def interrupted_at_step_4(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(sft_module, "examples", interrupted_at_step_4)
    capsys.readouterr()
    assert main(["sft", *args, f"out={out}"]) == 130
    err = capsys.readouterr().err
    assert err == (f"pillion sft: interrupted at step 3 (last checkpoint: {out / 'checkpoints' / 'step-000002'}); "
                   f"resume with: pillion sft out={out} --resume\n")
    monkeypatch.setattr(sft_module, "examples", real)
    (out / "checkpoints" / "step-000004.tmp").mkdir()  # a checkpoint write cut short
    (out / "checkpoints" / "step-000004.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a metrics line cut short
    command = err.split("resume with: ")[1].split()
    assert command[:2] == ["pillion", "sft"]
    assert main(command[1:]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert _rows(out) == full  # exactly: the same process count, the same float sums
    assert _report(out) == _report(tmp_path / "full")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())
    one, two = (AutoModelForCausalLM.from_pretrained(str(d / "final")).state_dict() for d in (tmp_path / "full", out))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_resume_of_another_commands_run_or_with_changed_keys_is_one_line_and_writes_nothing(tmp_path, capsys):
    rl_run, sft_run = tmp_path / "rl", tmp_path / "sft"
    for run, cfg in ((rl_run, C.resolve(C.TrainConfig)), (sft_run, C.resolve(C.SFTConfig, preset_key=None))):
        run.mkdir()
        (run / "config.yaml").write_text(C.dumps(cfg))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [(["sft", f"out={rl_run}", "--resume"],
              f"pillion sft: --resume: out={rl_run} holds a `pillion train` run (its config.yaml), not a `pillion sft` "
              f"run; continue it with `pillion train out={rl_run} --resume`, or give this sft run another out="),
             (["train", f"out={sft_run}", "--resume"],
              f"pillion train: --resume: out={sft_run} holds a `pillion sft` run (its config.yaml), not a `pillion "
              f"train` run; continue it with `pillion sft out={sft_run} --resume`, or give this train run another "
              "out="),
             (["sft", f"out={sft_run}", "--resume", "lr=0.5", "batch_size=8"],
              "pillion sft: --resume keeps the run's configuration, and batch_size, lr would change (batch_size: 64 "
              "-> 8; lr: 0.001 -> 0.5); keys that may change on resume: steps, save_every, max_bad_steps, threads, "
              "log, "
              "fsdp.timeout_s, out. Start a new run (another out=), or change them anyway with --allow-change "
              "batch_size --allow-change lr")]
    for argv, line in cases:
        capsys.readouterr()
        assert main(argv) == 2
        assert capsys.readouterr().err == line + "\n"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
