"""The package's import graph: every module imports, no module imports itself back through others
(a circle), and no module imports a floor above its own.

Floors, lowest first: a module may import its own floor and those below. Imports inside
functions count as much as those at the top of a file: a lazy import hides a circle or an
upward dependency, it does not remove it.
"""

import ast
import importlib
from pathlib import Path

import pytest

import pillion
from pillion.cli import COMMANDS

PACKAGE = Path(pillion.__file__).resolve().parent

FLOORS: list[tuple[str, tuple[str, ...]]] = [
    # The records and rank primitives every layer uses; the error every user mistake raises; config
    # fields that declare their ranges and the generic resolver (they know no group); atomic writes
    # and a full disk as one line.
    ("ground", ("pillion", "pillion.errors", "pillion.problem", "pillion.ranks", "pillion.threads", "pillion.fields",
                "pillion.resolver", "pillion.files")),
    # Pure functions on records and tensors: grading and the RL formulas.
    ("rewards and algorithms", ("pillion.rewards", "pillion.algorithms")),
    # Problems from files and curricula; the model and its checkpoints.
    ("data and model", ("pillion.data", "pillion.model")),
    ("rollout", ("pillion.rollout",)),
    # Sampling, grading and statistics over a model; pass-rate selection.
    ("evaluation", ("pillion.eval",)),
    # The loops and the config tree that composes every group's dataclass.
    ("training and config", ("pillion.train", "pillion.config")),
    # The command-line modules sit on top: a command may use any layer.
    ("commands", ("pillion.cli", "pillion.__main__", *(module for module, _ in COMMANDS.values()))),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: names for annotations, never imported at run time."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def imports(path: Path, known: set[str]) -> set[str]:
    """The pillion modules a file imports anywhere in it (`from pkg import module` names the module),
    inside functions too; imports for type annotations only (`if TYPE_CHECKING:`) run never and
    are left out."""
    out = set()
    tree = ast.parse(path.read_text())
    annotations_only = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pillion"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "pillion":
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                out.add(name if name in known else node.module)
    return out & known


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def floor(module: str) -> int:
    """The highest floor that names the module or a package holding it (commands are exact names)."""
    best = None
    for level, (_, names) in enumerate(FLOORS):
        exact = level == 0 or level == len(FLOORS) - 1
        if any(module == n or (not exact and module.startswith(n + ".")) for n in names):
            best = level
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")
    return best


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("name", sorted(set(modules()) - {"pillion.__main__"}))  # __main__ runs the CLI
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_circle():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_goes_up_a_floor():
    upward = sorted(f"{m} ({FLOORS[floor(m)][0]}) -> {d} ({FLOORS[floor(d)][0]})"
                    for m, deps in graph().items() for d in deps if floor(d) > floor(m))
    assert not upward, "imports up a floor:\n" + "\n".join(upward)


def test_the_checks_catch_what_they_look_for():
    # A circle through three modules and a self-contained pair; an upward edge by floor.
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert floor("pillion.rewards.shaping") < floor("pillion.data.formats") < floor("pillion.eval.select")
    assert floor("pillion.problem") == 0 and floor("pillion.data.cli") == len(FLOORS) - 1
    assert floor("pillion.train.rl") == floor("pillion.config")
