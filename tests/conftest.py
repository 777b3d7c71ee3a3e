"""Shared fixtures: tiny random checkpoints of each family, built once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

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
