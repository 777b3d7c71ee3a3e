"""benchmarks/attention_cpu.py: it times the two CPU attention kernels only after checking that
they agree, so a ratio it prints is between two right answers."""

import pytest
import torch


def test_the_attention_benchmark_checks_both_kernels_agree_before_timing(benchmark_script, monkeypatch):
    bench = benchmark_script("attention_cpu")
    threads = torch.get_num_threads()
    try:
        result = bench.compare(width=8, tokens=64, threads=1, repeats=1)
        assert result["rows"] == 8 and result["short"] > 0 and result["fused"] > 0
        alone = bench.compare(width=8, tokens=64, threads=1, repeats=1, fused_only=True)  # the long-row mode
        assert alone["fused"] > 0 and alone["short"] != alone["short"]  # nan: the short kernel did not run
        assert bench.decode_time(rows=2, span=8, threads=1, repeats=1) > 0  # the engine's decode attention runs
        real = bench.short_attention
        monkeypatch.setattr(bench, "short_attention", lambda q, k, v: real(q, k, v) * 1.001)
        with pytest.raises(AssertionError, match="width 8: short and fused output differ"):
            bench.compare(width=8, tokens=64, threads=1, repeats=1)
    finally:
        torch.set_num_threads(threads)
