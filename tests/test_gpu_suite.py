"""benchmarks/gpu_suite.py is ready for the one short GPU lending: every check runs here on CPU at
tiny sizes (--smoke) through the same child commands, and the gathered JSON holds each one's
measures; without CUDA the plain command prints one line and exits 0."""

import json

import pytest
import torch


def test_limits_fit_eight_minutes_without_trl(benchmark_script):
    limits = benchmark_script("gpu_suite").LIMITS
    assert sum(v for k, v in limits.items() if k != "trl") <= 8 * 60
    assert list(limits)[-1] == "trl"  # TRL's side runs last


@pytest.mark.slow
def test_smoke_runs_every_check_and_gathers_their_measures(tmp_path, capsys, benchmark_script):
    assert benchmark_script("gpu_suite").main(["--smoke", "--work", str(tmp_path)]) == 0
    gathered = json.loads((tmp_path / "gpu_suite.json").read_text())
    checks = gathered["checks"]
    assert list(checks) == ["model", "logprob", "rollout", "step", "memory", "learn"]  # no --trl-python: no trl
    assert all(c["status"] == "ok" for c in checks.values()), {k: c["status"] for k, c in checks.items()}
    assert (tmp_path / "model" / "config.json").exists()
    # float32 on CPU: engine, trainer and transformers agree to rounding
    for pair in ("engine_vs_trainer", "engine_vs_transformers", "trainer_vs_transformers"):
        assert 1.0 <= checks["logprob"]["measures"][pair]["metric"] < 1.001
    assert set(checks["rollout"]["measures"]["tokens_per_s"]) == {"pillion eager", "transformers dynamic",
                                                                  "transformers static"}
    step = checks["step"]["measures"]
    assert step["step_s"] > 0 and step["update_tokens_per_s"] > 0 and set(step["phases_s"]) >= {"update", "generate"}
    assert checks["memory"]["measures"]["lora+ckpt"]["pillion"]["peak"] > 0
    assert "pass1_after" in checks["learn"]["measures"]
    out = capsys.readouterr().out
    table = out[out.index("gpu_suite: CPU"):]
    for name in checks:
        assert f"  {name} " in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_without_cuda_one_line_and_exit_0(capsys, benchmark_script):
    assert benchmark_script("gpu_suite").main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "CUDA is not available" in out
