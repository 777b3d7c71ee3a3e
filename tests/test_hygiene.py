"""What keeps the tree readable for someone who clones it: every module in the README's annotated
tree, no module over 600 lines, and no pointer that means nothing outside this project's history
(a rule number of a style guide that is not in the repository, an issue number, a machine path)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pillion"
MAX_LINES = 600


def tree_entries() -> set[str]:
    """Paths the README's annotated tree names (`pillion/model/transformer.py`, ...): the fenced
    block under "## The code", two spaces of indent per folder level."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## The code", 1)[1].split("```\n", 2)[1]
    folders: list[str] = []
    named = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = (len(line) - len(line.lstrip())) // 2
        first = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]  # the name column
        if indent > len(folders):  # a wrapped comment line, no name
            continue
        del folders[indent:]
        for name in (n.strip() for n in first.split(",")):
            if name.endswith("/"):
                folders.append(name.rstrip("/"))
                break
            named.add("/".join([*folders, name]))
    return named


def test_the_readme_tree_names_every_module():
    named = tree_entries()
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(modules - named)
    assert not missing, f"modules missing from the README's tree under '## The code': {missing}"
    gone = sorted(n for n in named if n.endswith(".py") and not (ROOT / n).exists())
    assert not gone, f"the README's tree names modules that do not exist: {gone}"


def test_the_tree_parser_sees_nesting():
    named = tree_entries()
    assert {"pillion/cli.py", "pillion/model/transformer.py", "pillion/train/sft_cli.py"} <= named
    assert "pillion/transformer.py" not in named


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


# Built from parts so that this file does not match itself.
POINTERS = [
    (re.compile("STY" + r"LE rule|\bSTY" + r"LE\.md"), "a style-guide rule number: say the rule itself"),
    (re.compile(r"\biss" + r"ue \d+|\bissue #\d+", re.I), "an issue number: say the requirement itself"),
    (re.compile(r"/wo" + r"rk/|/ro" + r"ot/|/ho" + r"me/\w+/"), "a path on one machine"),
]


def test_no_pointer_that_means_nothing_to_a_reader():
    files = subprocess.run(["git", "ls-files", "pillion", "benchmarks", "tests", "scripts", "docs", "README.md"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".yaml", ".toml", ".txt") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, why in POINTERS:
                if pattern.search(line):
                    found.append(f"{name}:{number}: {why}: {line.strip()[:100]}")
    assert not found, "\n".join(found)
