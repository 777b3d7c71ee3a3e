"""Shared fixtures: tiny random checkpoints of each family, built once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

# One intra-op thread per test process (torch reads it at import; every run's threads=auto
# honours it, as do the subprocesses), and one pytest-xdist worker per core (`-n auto`, the
# README's command): the cores are used by processes, not by threads that wait for each other.
# On a busy 2-core machine every op at two threads waits for the thread whose core is taken
# (3-5x slower, pillion/threads.py), and a run's auto choice is made once, at its start. Measured
# on an idle 2-core machine: the suite serially at one thread 1338 s, with -n 2 1018 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message=".*generation flags.*")

FAMILIES = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(family, **kwargs) -> folder; identical requests share one folder."""
    from pillion.model.tiny import make_tiny_checkpoint

    made: dict[tuple, str] = {}

    def make(family: str = "qwen2", **kwargs) -> str:
        key = (family, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])).__repr__())
        if key not in made:
            path = tmp_path_factory.mktemp(f"ckpt-{family}")
            made[key] = str(make_tiny_checkpoint(path, family, **kwargs))
        return made[key]

    return make


@pytest.fixture
def benchmark_script(monkeypatch):
    """benchmark_script(name) -> benchmarks/NAME.py loaded as a module (the folder is no package;
    it is put on sys.path, as running a script there does, for the scripts that import each other)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_collection_modifyitems(config, items):
    """Longest first under pytest-xdist (`-n auto --dist loadgroup` hands out work in collection
    order): the modules that hold one xdist group of shared multi-rank launches, then the modules
    with slow tests, then the rest, each module's tests kept together and in order. Collected in
    file order, test_parallel_presets' ~5-minute group came ~90% of the way in, so one worker began
    it when the other had little left (clean clone, slower machine: 1030 s of pytest)."""
    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None:
            return 0 if group.args and group.args[0] == "parallel_presets" else 1
        return 2 if item.get_closest_marker("slow") else 3

    def module(item) -> str:
        return item.nodeid.split("::")[0]

    module_rank: dict[str, int] = {}
    for item in items:
        module_rank[module(item)] = min(module_rank.get(module(item), 3), rank(item))
    items.sort(key=lambda item: module_rank[module(item)])  # stable: file order within a rank
