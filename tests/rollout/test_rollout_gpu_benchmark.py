"""benchmarks/rollout_gpu.py is ready to run where CUDA is: its code runs here on CPU (--smoke:
the same model building, engines and timing on a tiny model), and it skips cleanly."""

import pytest
import torch


def test_smoke_run_on_cpu_builds_equal_models_and_times_every_engine(capsys, benchmark_script):
    bench = benchmark_script("rollout_gpu")
    hf, model = bench.build_models(bench.TINY, "cpu", torch.float32)
    ids = torch.randint(1, 1024, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the in-memory conversion gives pillion transformers' weights
        ours = model.logits(model(ids, torch.arange(9)[None].expand(2, -1), None))
        torch.testing.assert_close(ours, hf(input_ids=ids).logits, atol=1e-4, rtol=0)
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for engine in ("pillion eager", "transformers dynamic", "transformers static"):
        assert f"  {engine}" in out
    assert "vs transformers dynamic" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_skips_cleanly_without_cuda(capsys, benchmark_script):
    assert benchmark_script("rollout_gpu").main([]) == 0
    assert "skipped, no CUDA device" in capsys.readouterr().out
