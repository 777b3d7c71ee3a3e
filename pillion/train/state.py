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
the next start. Only the newest `keep` checkpoints are kept, pruned after the rename (each
renamed to `.tmp` before it is deleted, so that a kill mid-delete leaves nothing that stays). A write
that fails for lack of space removes its `.tmp` folder at once and ends the run with one line
(pillion/files.py `writing`): the newest complete checkpoint is never touched before the rename.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from pillion.files import fsync_path, save_torch, write_text_atomic, writing  # noqa: F401 (the loops' writers)
from pillion.model.checkpoint import complete_checkpoints, save_model, write_recipe
from pillion.model.hf_config import CheckpointError


class RunStopped(RuntimeError):
    """A run (`pillion train` or `pillion sft`) stopped itself: `max_bad_steps` non-finite updates
    in a row. The message says why and which checkpoint to resume from; the CLI exits 1."""


class RunInterrupted(RuntimeError):
    """Ctrl-C: `step` steps were done; the run resumes from its last checkpoint."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"interrupted at step {step} (last checkpoint: {latest(run_dir) or 'none yet'})")
        self.step, self.run_dir = step, run_dir


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def _complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints (renamed into place, trainer state present), oldest first."""
    return complete_checkpoints(run_dir)


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
    with writing(final, cleanup=tmp, hint=intact(run_dir)):  # a full disk: one line, tmp removed
        save_model(model, tmp, source=source)
        if recipe:
            write_recipe(tmp, recipe)
        save_torch({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
        return commit(run_dir, tmp, final, keep)


def intact(run_dir: Path) -> str:
    """What a failed checkpoint write leaves: the run's newest complete checkpoint."""
    last = latest(run_dir)
    return f"; the last complete checkpoint, {last.name}, is intact" if last else "; no checkpoint yet"


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
        # Renamed first: a kill during the delete leaves a `.tmp` folder that the next start
        # removes (clean_stale), not a half-deleted step-N kept for good.
        doomed = old.with_name(old.name + ".tmp")
        shutil.rmtree(doomed, ignore_errors=True)
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
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
