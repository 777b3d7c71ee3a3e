"""Checkpoints of a run: the policy as a Hugging Face folder plus everything needed to resume.

    runs/NAME/checkpoints/step-000020/
        config.json, model.safetensors, tokenizer.json, ...   the policy (transformers loads it)
        trainer_state.pt                                      step, optimizer(s), RNG, data state,
                                                              critic weights, counters

A checkpoint is written to a temporary folder and renamed into place, so a crash mid-write
never leaves a half checkpoint that `latest` would pick up. Only the newest `keep` are kept.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from pillion.model.checkpoint import save_model


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = run_dir / "checkpoints"
    done = sorted(p for p in folder.glob("step-*") if (p / "trainer_state.pt").exists()) if folder.exists() else []
    return done[-1] if done else None


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


def save(run_dir: Path, step: int, model, source: Path, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically and prune older ones; return its folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, source=source)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    done = sorted(p for p in final.parent.glob("step-*") if not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(folder: Path) -> dict[str, Any]:
    state = torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)
    set_rng_state(state["rng"])
    return state
