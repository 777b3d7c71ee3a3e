"""benchmarks/scaling_cpu.py: the fitted growth of the step time with the answer's length, and
the workloads it names through step_cpu.py."""

import pytest


def test_fit_exponent_recovers_the_power_of_a_hand_made_series(benchmark_script):
    fit = benchmark_script("scaling_cpu").fit_exponent
    # t = 0.01 x tokens: 1.28, 5.12, 20.48 s -> k = 1 (linear)
    assert fit([128, 512, 2048], [1.28, 5.12, 20.48]) == pytest.approx(1.0)
    # t = tokens^1.5 / 1000: 1.448, 11.585, 92.682 s -> k = 1.5
    assert fit([128, 512, 2048], [t**1.5 / 1000 for t in (128, 512, 2048)]) == pytest.approx(1.5)
    # two points: 4x the tokens in 4x the time, log 4 / log 4 = 1
    assert fit([100, 400], [2.0, 8.0]) == pytest.approx(1.0)


def test_step_cpu_reads_grid_workloads_and_the_readme_job(benchmark_script):
    step_cpu = benchmark_script("step_cpu")
    model, prompts, samples, tokens, ignore_eos = step_cpu.workload("24m/1x16x2048")
    assert model == step_cpu.MODELS["24m"] and (prompts, samples, tokens, ignore_eos) == (1, 16, 2048, True)
    from pillion.config import TrainConfig

    job = TrainConfig()  # the default job's sizes, EOS honoured
    assert step_cpu.workload("readme") == ("default", job.prompts_per_step, job.group_size, job.max_new_tokens, False)
    assert step_cpu.workload("tiny") == step_cpu.WORKLOADS["tiny"]
