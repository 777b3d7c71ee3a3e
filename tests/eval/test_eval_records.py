"""Evaluation records: pass@1 interval and standard error, versions, the model folder's hash."""

import hashlib
import json
import math
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import pillion
from pillion.cli import main
from pillion.eval.passk import interval
from pillion.eval.provenance import model_record, versions


def test_standard_error_by_hand():
    # rates 1/4, 0, 4/4, 2/4 -> p = 0.4375; se = sqrt(0.4375 * 0.5625 / 4) = sqrt(0.0615234375)
    out = interval([1, 0, 4, 2], k=4)
    assert out["pass@1_se"] == pytest.approx(0.2480392, abs=1e-7)
    low, high = out["pass@1_ci95"]
    assert 0.0 <= low <= 0.4375 <= high <= 1.0
    assert out["ci"] == {"method": "percentile bootstrap over problems", "resamples": 1000, "seed": 0}


def test_equal_problems_give_a_point_interval():
    # every problem at 2/4: each resample's pass@1 is 0.5; se = sqrt(0.25 / 3)
    out = interval([2, 2, 2], k=4)
    assert out["pass@1_ci95"] == [0.5, 0.5]
    assert out["pass@1_se"] == pytest.approx(math.sqrt(0.25 / 3))
    assert interval([0, 0], k=2)["pass@1_se"] == 0.0


def test_bootstrap_agrees_with_the_normal_approximation():
    # 400 problems with k = 1 (Bernoulli, p ~ 0.3): the percentile interval's half-width is
    # close to 1.96 standard errors (the normal approximation holds at this n).
    rng = random.Random(0)
    counts = [int(rng.random() < 0.3) for _ in range(400)]
    out = interval(counts, k=1, seed=3)
    p = sum(counts) / 400
    low, high = out["pass@1_ci95"]
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(1.96 * out["pass@1_se"], rel=0.15)
    assert interval(counts, k=1, seed=3) == out  # seeded
    assert interval(counts, k=1, seed=4)["pass@1_ci95"] != out["pass@1_ci95"]


def test_versions():
    found = versions()
    assert found["pillion"] == pillion.__version__
    assert found["torch"] == torch.__version__
    assert found["math-verify"] and found["sympy"]
    assert json.loads(json.dumps(found)) == found
    root = Path(pillion.__file__).resolve().parent.parent
    if (root / ".git").exists():  # a checkout: its HEAD (an installed copy records None)
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert found["pillion_commit"].split("+")[0] == head


def test_model_hash_covers_config_and_weights(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"hidden_size": 8}')
    (a / "model.safetensors").write_bytes(b"\x01\x02\x03")
    (a / "tokenizer.json").write_text("{}")  # not hashed
    record = model_record(a)
    # Independent of the function: sha256 over (name NUL bytes NUL) per file, in name order.
    expected = hashlib.sha256(b'config.json\0{"hidden_size": 8}\0model.safetensors\0\x01\x02\x03\0').hexdigest()
    assert record == {"model_hash": f"sha256:{expected}", "model_files": ["config.json", "model.safetensors"]}

    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "tokenizer.json").write_text('{"changed": true}')
    assert model_record(b)["model_hash"] == record["model_hash"]
    (b / "model.safetensors").write_bytes(b"\x01\x02\x04")
    assert model_record(b)["model_hash"] != record["model_hash"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_record(tmp_path / "empty")


def test_eval_cli_records_everything(tiny_checkpoint, tmp_path, capsys):
    folder = tiny_checkpoint("qwen2")
    out = tmp_path / "out"
    argv = ["eval", "--model", folder, "--data", "synthetic:3", "--k", "2", "--max-new-tokens", "4",
            "--template", "qa", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_hash"] == model_record(folder)["model_hash"]
    assert result["model_files"] == ["config.json", "model.safetensors"]
    assert result["num_prompts"] == 3 and result["template"] == "qa" and result["template_text"] == "Q: {question}\nA:"
    assert result["versions"]["pillion"] == pillion.__version__
    low, high = result["pass@1_ci95"]
    assert low <= result["pass@1"] <= high
    assert set(result["behaviour"]) >= {"reflection_rate", "reflection_count"}
    table = (out / "eval.md").read_text()
    assert "95% CI [" in table and f"model {result['model_hash'][:19]}" in table and "3 prompts" in table
