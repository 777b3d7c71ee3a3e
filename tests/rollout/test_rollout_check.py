"""`pillion logprob-check` end to end through the CLI, on tiny checkpoints of each family."""

import json

import pytest

from pillion.cli import main
from tests.conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_logprob_check_fp32_is_exact(tiny_checkpoint, capsys, family):
    code = main(["logprob-check", "--model", tiny_checkpoint(family), "--n", "2", "--max-new-tokens", "24", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    assert report["tokens"] > 0 and report["rollouts"] == 8
    for pair in ("engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"):
        assert 1.0 <= report[pair]["metric"] <= 1.001, pair
        assert report[pair]["max_abs_error"] < 1e-3


def test_logprob_check_bf16_table_and_threshold(tiny_checkpoint, capsys):
    folder = tiny_checkpoint("qwen2")
    code = main(["logprob-check", "--model", folder, "--dtype", "bfloat16", "--n", "2", "--max-new-tokens", "16"])
    out = capsys.readouterr().out
    assert code == 0 and "engine_vs_transformers" in out and "PASS" in out
    # A threshold below 1 can never pass: the command must exit non-zero and say why.
    code = main(["logprob-check", "--model", folder, "--n", "1", "--max-new-tokens", "4", "--threshold", "0.5"])
    captured = capsys.readouterr()
    assert code == 1 and "FAIL" in captured.out and "above threshold" in captured.err


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_logprob_check_cuda_bf16_within_nemo_threshold(tiny_checkpoint, capsys):
    code = main(["logprob-check", "--model", tiny_checkpoint("qwen3"), "--device", "cuda", "--dtype", "bfloat16",
                 "--n", "4", "--max-new-tokens", "64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["engine_vs_trainer"]["metric"] <= 1.05
