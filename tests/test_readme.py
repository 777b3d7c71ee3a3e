"""The README's set-up commands and CI stay in step; the CLI lists its commands."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(pip install [^\n]+)\n```", text)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = _commands()[:2]
    assert main_cmd.endswith("pillion train") and "torch==2.13.0" in main_cmd
    assert "pytest" in test_cmd and "torch==2.13.0" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pillion", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for command in ("train", "sft", "eval", "logprob-check", "data"):
        assert command in out.stdout
