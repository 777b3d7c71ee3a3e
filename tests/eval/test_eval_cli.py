"""`pillion eval` through the real dispatcher on a tiny checkpoint."""

import argparse
import json

from pillion.cli import main
from pillion.eval import cli

REQUIRED = {"pass@1", "pass@k", "k", "n", "by_level", "by_subject", "mean_length", "temperature", "top_p",
            "max_new_tokens", "seed", "samples", "model", "data"}


def write_fixture(tmp_path):
    rows = [
        {"question": "What is 1+1?", "answer": "2", "level": 1},
        {"question": "What is 2+3?", "answer": "5", "level": 1},
        {"question": "What is 9*9?", "answer": "81", "level": 3},
    ]
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_json_on_stdout_and_files_written(tiny_checkpoint, tmp_path, capsys):
    folder = tiny_checkpoint("qwen2")
    out = tmp_path / "out"
    argv = ["eval", "--model", folder, "--data", str(write_fixture(tmp_path)), "--k", "2",
            "--max-new-tokens", "6", "--template", "qa", "--temperature", "1.0", "--out", str(out), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the JSON is the only thing on stdout
    assert REQUIRED <= set(result)
    assert result["n"] == 3 and result["k"] == 2 and result["temperature"] == 1.0
    assert list(result["by_level"]) == ["1", "3"] and result["by_level"]["1"]["n"] == 2
    assert 1 <= result["mean_length"] <= 6
    assert "wrote" in captured.err
    assert json.loads((out / "eval.json").read_text()) == result
    table = (out / "eval.md").read_text()
    assert "| all | 3 |" in table and "| level 3 | 1 |" in table


def test_synthetic_data_limit_and_default_out(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    folder = tiny_checkpoint("qwen2")
    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--model", folder, "--data", "synthetic:6", "--limit", "2", "--k", "1", "--max-new-tokens", "4"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("| group | n | pass@1 (%)")  # without --json: the table
    out = tmp_path / "runs" / f"eval-{folder.rstrip('/').split('/')[-1]}-synthetic-6"
    result = json.loads((out / "eval.json").read_text())
    assert result["n"] == 2 and result["data"] == "synthetic:6"
    assert list(result["by_level"]) == ["1", "2"]  # synthetic:N cycles levels 1, 2, 3


def test_input_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    folder = tiny_checkpoint("qwen2")
    assert main(["eval", "--model", folder, "--data", "synthetic:zero"]) == 2
    assert main(["eval", "--model", str(tmp_path), "--data", "synthetic:2"]) == 2
    assert main(["eval", "--model", folder, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["eval", "--model", folder, "--data", "synthetic:2", "--template", "no placeholder"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 4


def test_help_states_protocol_defaults():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    text = parser.format_help()
    assert "default 0.7, MATH-500 protocol" in text and "default 0.95" in text and "default 4" in text
    assert "synthetic:N" in text
    args = parser.parse_args(["--model", "m", "--data", "d"])
    assert (args.k, args.temperature, args.top_p, args.max_new_tokens) == (4, 0.7, 0.95, 1024)
    assert args.template is None and args.answer_style is None  # the model's recipe, else plain / the grader's
    assert "runs/RUN/checkpoints/step-" in text  # the example names a folder that runs really create


def test_the_template_a_model_was_trained_with_is_used_unless_told_otherwise(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from pillion.model.checkpoint import write_recipe

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint("qwen2"), folder)
    write_recipe(folder, {"template": "qa", "answer_style": "boxed"})
    base = ["eval", "--model", str(folder), "--data", "synthetic:2", "--k", "1", "--max-new-tokens", "2", "--json"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert (recorded["template"], recorded["answer_style"]) == ("qa", "boxed")
    assert main([*base, "--out", str(tmp_path / "b"), "--template", "plain", "--answer-style", "gsm8k"]) == 0
    told = json.loads(capsys.readouterr().out)
    assert (told["template"], told["answer_style"]) == ("plain", "gsm8k")


def test_k_1_table_has_one_pass_column_and_progress_lines_without_a_terminal(tiny_checkpoint, tmp_path, capsys):
    argv = ["eval", "--model", tiny_checkpoint("qwen2"), "--data", "synthetic:3", "--k", "1", "--max-new-tokens", "2",
            "--batch-prompts", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "| group | n | pass@1 (%) |"  # not pass@1 twice
    assert all(line.count("|") == 4 for line in captured.out.splitlines() if line.startswith("|"))
    # stderr is not a terminal under pytest: one progress line per batch of 2 prompts.
    assert [line.split(",")[0] for line in captured.err.splitlines() if line.startswith("eval: batch")] == [
        "eval: batch 1/2", "eval: batch 2/2"]
