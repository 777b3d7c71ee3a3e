"""`pillion data inspect`: counts by source and level, missing gold answers, examples."""

import argparse
import io
import json

from pillion.cli import main
from pillion.data import cli


def fixture(tmp_path):
    rows = [
        {"question": "What is 1+1?", "answer": "2", "level": 1, "source": "easy"},
        {"question": "What is 2+2?", "answer": "4", "level": 1, "source": "easy"},
        {"question": "What is 9*9?", "answer": "81", "level": 3, "source": "hard"},
        {"question": "What is 7*7?", "source": "hard"},  # row 4: no gold answer
        {"question": "", "answer": "1"},  # row 5: malformed
        {"question": "Write f.", "tests": ["assert f() == 1"]},
    ]
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def inspect(path, *extra):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = io.StringIO()
    assert cli.run(parser.parse_args(["inspect", str(path), *extra]), out=out) == 0
    return out.getvalue()


def test_inspect_output(tmp_path):
    text = inspect(fixture(tmp_path), "--examples", "2")
    assert "format:   generic" in text
    assert "rows:     6 (4 problems, 2 skipped)" in text
    assert "without gold answer: 1 (rows 4)" in text
    assert "malformed rows: 1" in text and "row 5: question: missing or empty" in text
    lines = text.splitlines()
    by_source = lines[lines.index("by source:") + 1:lines.index("by level:")]
    assert [line.split() for line in by_source] == [["easy", "2"], ["generic", "1"], ["hard", "1"]]
    by_level = lines[lines.index("by level:") + 1:lines.index("by level:") + 4]
    assert [line.split() for line in by_level] == [["1", "2"], ["3", "1"], ["none", "1"]]
    assert "by kind:  code 1, math 3" in text
    assert text.count("--- example") == 2 and "question: What is 1+1?" in text


def test_inspect_through_the_pillion_command(tmp_path, capsys):
    assert main(["data", "inspect", str(fixture(tmp_path)), "--examples", "0"]) == 0
    out = capsys.readouterr().out
    assert "without gold answer: 1" in out and "--- example" not in out


def test_inspect_unreadable_file(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl")]) == 2  # every command's user errors: exit 2
    assert "no such file" in capsys.readouterr().err
