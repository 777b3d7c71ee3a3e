"""Checkpoints of a run: the policy as a Hugging Face folder plus everything needed to resume.

    runs/NAME/checkpoints/step-000020/
        config.json, model.safetensors, tokenizer.json, ...   the policy (transformers loads it)
        pillion.json                                          template and answer style it was trained with
        trainer_state.pt                                      step, optimizer(s), RNG, data state,
                                                              critic weights, counters
        dcp/                                                  several ranks: sharded models and optimizers
                                                              (train/sharded.py; then trainer_state.pt
                                                              holds no tensors of the models)

A checkpoint is written into `step-N.tmp/`, every file is fsynced, and the folder is renamed to
`step-N` (then the parent folder is fsynced): a process killed at any point leaves either the
complete checkpoint or a `.tmp` folder that `latest` never returns and `clean_stale` removes at
the next start. Only the newest `keep` checkpoints are kept, pruned after the rename.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pillion.model.checkpoint import save_model, write_recipe
from pillion.model.hf_config import CheckpointError

_STEP_DIR = re.compile(r"step-(\d+)")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def _complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, trainer state present), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    done = _complete(run_dir)
    return done[-1] if done else None


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove the `.tmp` leftovers of checkpoints whose writing was interrupted; return them."""
    folder = run_dir / "checkpoints"
    stale = sorted(folder.glob("*.tmp")) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return stale


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entry list, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file, fsync and rename: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, model, source: Path, trainer_state: dict[str, Any], keep: int = 2,
         recipe: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `step` atomically (see the module docstring), prune older ones; return it.
    `recipe` (template, answer style) goes to pillion.json so `pillion eval` can reuse it."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, source=source)
    if recipe:
        write_recipe(tmp, recipe)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    return commit(run_dir, tmp, final, keep)


def commit(run_dir: Path, tmp: Path, final: Path, keep: int = 2) -> Path:
    """fsync a written `.tmp` checkpoint folder, rename it into place, prune older ones. (Several
    ranks: rank 0 calls it once every rank's shards are written; train/sharded.py.)"""
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if final.exists():  # the same step written again (a resumed run re-saving it)
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_path(final.parent)
    for old in _complete(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / "trainer_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign file: name it instead of an EOFError traceback
        raise CheckpointError(f"{path}: cannot read the trainer state ({type(e).__name__}: {e}); "
                              "delete this checkpoint folder to resume from the one before") from None
    set_rng_state(state["rng"])
    return state
