"""What an evaluation result records about where it came from: library versions and the model.

    versions()              {"pillion": "0.1.0", "pillion_commit": "abc123...", "torch": ..., ...}
    model_record(model_dir) {"model_hash": "sha256:...", "model_files": ["config.json", ...]}

`pillion.eval.evaluate` adds `versions()` to every result (docs/algorithms.md §14 asks for the
protocol and the software behind a number); `pillion eval` adds the model folder's record.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # files hashed with config.json


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """pillion (and its git commit when run from a checkout), the grader's libraries, torch."""
    import pillion

    out = {"pillion": pillion.__version__, "pillion_commit": None}
    root = Path(pillion.__file__).resolve().parent.parent
    # A checkout: the commit says more than the version number ("+dirty" when edited). Only when
    # the package's own parent is the repository, never an enclosing repo of site-packages.
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                  text=True, timeout=5)
            if head.returncode == 0:
                dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                out["pillion_commit"] = head.stdout.strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("math-verify", "sympy", "torch", "transformers"):
        out[name] = _version(name)
    return out


def model_record(model_dir: str | Path) -> dict[str, Any]:
    """{"model_hash": "sha256:...", "model_files": [...]} of a model folder.

    The hash covers config.json and the weight files (*.safetensors, *.bin, *.pt, *.pth, in name
    order), each file's name and bytes, read once in 8 MiB blocks: two folders with the same
    hash hold the same model. Tokenizer files are not included. A PEFT adapter folder (a LoRA
    run's checkpoint) hashes adapter_config.json and its weights in place of config.json, and
    adds its base model's record as `base_model_hash`.
    """
    from pillion.model import adapters

    folder = Path(model_dir)
    adapter = adapters.is_adapter_folder(folder)
    head = adapters.ADAPTER_CONFIG if adapter else "config.json"
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name == head or
                                                                   p.name.endswith(WEIGHT_SUFFIXES)))
    if not any(p.name == head for p in files):
        raise FileNotFoundError(f"{folder}: no config.json to hash")  # callers resolved the folder first
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(8 << 20):
                digest.update(block)
        digest.update(b"\0")
    record = {"model_hash": f"sha256:{digest.hexdigest()}", "model_files": [p.name for p in files]}
    if adapter:
        base = adapters.base_folder(adapters.read_adapter_config(folder))
        record["base_model_hash"] = model_record(base)["model_hash"]
    return record
