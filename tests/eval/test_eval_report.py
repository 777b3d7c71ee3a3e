"""write_report on synthetic run directories: summary, plots, robustness to missing metrics."""

import json
import math

from pillion.eval.report import duration, group_of, heldout_curves, read_metrics, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def full_run(run_dir, steps=40):
    rows = []
    for step in range(1, steps + 1):
        # (metrics that stay constant get no panel: see test_constant_metrics_get_no_panel)
        rows.append({"step": step, "reward": 0.2 + step / 100, "accuracy": step / 50, "response_length": 300 - step,
                     "kl": 0.001 * step, "entropy": 1.0 - step / 100, "loss": 1.0 / step, "clipfrac": 0.02 + step / 1e3,
                     "grad_norm": 0.5 + step / 100, "logprob_error": 0.003 + step / 1e4, "tokens_per_s": 900.0 + step,
                     "step_time": 2.0 + step / 100, "phase": "rollout", "skipped_groups": None})
        if step % 20 == 0:
            rows.append({"step": step, "eval/pass@1": step / 100})
    rows.append("{truncated line")
    write_lines(run_dir / "metrics.jsonl", rows)
    (run_dir / "config.yaml").write_text("algorithm: grpo\nlr: 1.0e-6\n")


def test_full_report(tmp_path):
    full_run(tmp_path)
    eval_after = {"pass@1": 0.375, "pass@k": 0.75, "k": 4, "n": 8, "temperature": 0.7, "top_p": 0.95,
                  "max_new_tokens": 64, "seed": 0, "mean_length": 31.5,
                  "by_level": {"1": {"pass@1": 0.5, "pass@k": 1.0, "n": 4},
                               "2": {"pass@1": 0.25, "pass@k": 0.5, "n": 4}},
                  "by_subject": {"synthetic": {"pass@1": 0.375, "pass@k": 0.75, "n": 8}}}
    summary = {"pass1_before": 0.125, "pass1_after": 0.375, "n_heldout": 8, "eval_after": eval_after}
    (tmp_path / "report.json").write_text(json.dumps(summary))

    path = write_report(tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "40 logged steps, 1 to 40." in text
    assert "Final reward: 0.6 (first 0.21)." in text  # 0.2 + 40/100
    assert "1 line(s) of metrics.jsonl were not JSON objects" in text
    assert "| pass@1 | 0.125 | 0.375 | +0.25 |" in text  # before/after from the summary
    assert "| pass@4 | - | 0.75 | - |" in text  # only the after-eval has pass@k
    assert "| level 2 | 4 | 25.0 | 50.0 |" in text  # the eval table of eval_after
    assert "| reward | 0.21 | 0.6 |" in text
    assert "```yaml\nalgorithm: grpo\nlr: 1.0e-6\n```" in text
    expected = {"reward", "length", "kl_entropy", "loss", "optim", "mismatch", "throughput"}
    # and the held-out pass@1 curve: 0.125 before, 0.2 at step 20 (eval_every), 0.375 after (step 40)
    assert {p.stem for p in (tmp_path / "plots").iterdir()} == expected | {"heldout"}
    for name in expected:
        assert f"![{name}](plots/{name}.png)" in text
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "phase" not in text and "skipped_groups" not in text  # non-numeric values are not metrics


def test_missing_metrics_and_files(tmp_path):
    write_lines(tmp_path / "metrics.jsonl", [{"step": 1, "reward": 0.5}, {"reward": "n/a"}, {"reward": 0.75},
                                             {"step": 9, "custom_thing": 3}])
    text = write_report(tmp_path).read_text()
    assert "Final reward: 0.75" in text
    assert "Held-out" not in text and "## Config" not in text
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"reward.png", "other.png"}
    assert (tmp_path / "plots" / "other.png").read_bytes()[:8] == PNG_SIGNATURE


def test_empty_run_dir(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "No metrics logged" in text
    assert not (tmp_path / "plots").exists()


def test_read_metrics_steps_and_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # NaN is valid for Python's json; true is a flag; a row without "step" follows the previous one.
    write_lines(path, ['{"step": 3, "kl": NaN, "reward": 1}', '{"reward": 2, "done": true}', "[1, 2]", "",
                       '{"step": 10, "reward": 0.5, "kl": 0.1}'])
    series, skipped = read_metrics(path)
    assert series == {"reward": [(3, 1.0), (4, 2.0), (10, 0.5)], "kl": [(10, 0.1)]}
    assert skipped == 1
    assert not any(math.isnan(v) for points in series.values() for _, v in points)


def test_group_of():
    assert group_of("reward") == group_of("eval/pass@1") == group_of("reward_std") == "reward"
    assert group_of("response_length") == group_of("response_length_max") == "length"
    assert group_of("kl") == group_of("entropy") == "kl_entropy"
    assert group_of("policy_loss") == group_of("critic_loss") == "loss"
    assert group_of("grad_norm") == "optim" and group_of("tokens_per_s") == "throughput"
    assert group_of("something_new") == "other"


def test_behaviour_plots_and_eval_records(tmp_path):
    rows = [{"step": s, "reward": s / 10, "response_length": 40 - s, "response_length_correct": 30 - s,
             "response_length_incorrect": 50 - s, "reflection_rate": s / 20, "reflection_count": s / 10,
             "kl_initial": 0.01 * s, "kl_initial_k1": 0.02 * s} for s in range(1, 11)]
    write_lines(tmp_path / "metrics.jsonl", rows)
    base = {"k": 4, "n": 8, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 64, "seed": 0}
    before = {**base, "pass@1": 0.25, "pass@k": 0.5, "mean_length": 40.0, "pass@1_ci95": [0.1, 0.4],
              "pass@1_se": 0.15, "behaviour": {"reflection_rate": 0.5, "response_length_incorrect": 44.0}}
    after = {**base, "pass@1": 0.5, "pass@k": 0.75, "mean_length": 30.0, "pass@1_ci95": [0.3, 0.7],
             "pass@1_se": 0.18, "behaviour": {"reflection_rate": 0.25, "response_length_incorrect": 34.0},
             "num_prompts": 8, "template": "qa", "model_hash": "sha256:" + "ab" * 32}
    (tmp_path / "report.json").write_text(json.dumps({"eval_before": before, "eval_after": after}))
    text = write_report(tmp_path).read_text()
    plots = {p.stem for p in (tmp_path / "plots").iterdir()}
    assert plots == {"reward", "length", "behaviour", "kl_entropy"}
    assert group_of("reflection_rate") == "behaviour" and group_of("kl_initial") == "kl_entropy"
    assert group_of("response_length_incorrect") == "length"
    lines = text.splitlines()
    i = lines.index("| pass@1 | 0.25 | 0.5 | +0.25 |")
    assert lines[i + 1] == "| pass@1 95% CI | [0.1, 0.4] | [0.3, 0.7] | - |"  # right under pass@1
    assert "| reflection rate | 0.5 | 0.25 | -0.25 |" in text
    assert "| mean length, incorrect | 44 | 34 | -10 |" in text
    assert "| mean length, correct |" not in text  # in neither evaluation
    assert "Records: 8 prompts; template 'qa'; model sha256:abababababab." in text


def _result(pass1, n=4, examples=()):
    return {"pass@1": pass1, "pass@k": pass1, "k": 1, "n": n, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8,
            "seed": 0, "mean_length": 5.0, "template": "qa", "answer_style": "boxed", "examples": list(examples)}


def test_every_held_out_set_its_curve_examples_and_wall_time(tmp_path):
    """An SRPO-shaped run: arithmetic and code held-out sets, evaluated every 2 of 4 steps."""
    rows = [{"step": s, "reward": s / 10, "ratio_max": 1.0, "logprob_error": 1.0 + 1e-9 * s} for s in range(1, 5)]
    rows += [{"step": 2, "eval/pass@1": 0.3, "eval/arith/pass@1": 0.3, "eval/code/pass@1": 0.6},
             {"step": 4, "eval/pass@1": 0.35, "eval/arith/pass@1": 0.35, "eval/code/pass@1": 0.7}]
    write_lines(tmp_path / "metrics.jsonl", rows)
    right = {"id": "c/1", "question": "def f", "gold": "", "completion": "def f(x):\n    return x", "extracted": "x",
             "correct": True}
    wrong = {"id": "a/2", "question": "What is 5+3?", "gold": "8", "completion": "5+3=8. The answer is 8.",
             "extracted": None, "correct": False}
    summary = {"pass1_before": 0.25, "pass1_after": 0.5, "n_heldout": 4, "wall_seconds": 92.4,
               "eval_before": _result(0.25), "eval_after": _result(0.5, examples=[wrong]),
               "pass1_before/arith": 0.25, "pass1_after/arith": 0.5, "pass1_before/code": 0.5, "pass1_after/code": 0.75,
               "eval_before/arith": _result(0.25), "eval_after/arith": _result(0.5, examples=[wrong]),
               "eval_before/code": _result(0.5), "eval_after/code": _result(0.75, examples=[right])}
    (tmp_path / "report.json").write_text(json.dumps(summary))
    text = write_report(tmp_path).read_text()
    assert "Wall time: 1 min 32 s (evaluations included)." in text
    assert "Answers graded in the 'boxed' style; prompts rendered with template 'qa'." in text
    assert "| arith | 4 | 0.25 | 0.5 | +0.25 |" in text and "| code | 4 | 0.5 | 0.75 | +0.25 |" in text
    assert "### Evaluation after training: code" in text and "### Evaluation before training: arith" in text
    assert "### Completions after training: code" in text and "- **right** (c/1): 'def f'" in text
    assert "- **wrong** (a/2): 'What is 5+3?'; gold '8', graded answer none found" in text
    # pass@1 by step, before (0) to after (4); the periodic evaluation at the last step is the "after" one
    assert heldout_curves(read_metrics(tmp_path / "metrics.jsonl")[0], summary) == {
        "arith": [(0, 0.25), (2, 0.3), (4, 0.5)], "code": [(0, 0.5), (2, 0.6), (4, 0.75)]}
    assert "![held-out pass@1](plots/heldout.png)" in text
    # a metric constant to float noise gets no panel, and is named with its value
    assert "Constant over the run (no plot): logprob_error 1, ratio_max 1." in text
    assert {p.stem for p in (tmp_path / "plots").iterdir()} == {"reward", "heldout"}


def test_duration():
    assert (duration(41.24), duration(92.4), duration(3725)) == ("41.2 s", "1 min 32 s", "1 h 02 min")
