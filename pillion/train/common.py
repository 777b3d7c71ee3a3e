"""Plain helpers shared by the RL and SFT loops: devices, seeds, data, optimiser, logging.

Functions only; each loop file calls what it needs (shared/STYLE.md rule 13: no base class).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from pillion.data import read, synthetic, synthetic_code
from pillion.data.problem import Problem
from pillion.model.checkpoint import DEFAULT_MODEL, resolve_model  # noqa: F401 (re-exported for the loops)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_source(spec: str, size: int, data_cfg, seed: int, split: str = "train") -> list[Problem]:
    """Problems for one data spec: "synthetic:1,2,3" (levels), "synthetic_code:1,2" or a dataset file."""
    if spec.startswith("synthetic_code"):  # the code curriculum; before the "synthetic" prefix test
        levels = tuple(int(x) for x in spec.partition(":")[2].split(",") if x) or (1, 2)
        return synthetic_code.generate(size, levels=levels, seed=seed, split=split)
    if spec.startswith("synthetic"):
        levels = tuple(int(x) for x in spec.partition(":")[2].split(",") if x) or (1, 2, 3)
        return synthetic.generate(size, levels=levels, seed=seed, split=split)
    return read(spec, format=data_cfg.format, on_error=data_cfg.on_error)


def load_data(data_cfg, seed: int) -> tuple[dict[str, list[Problem]], list[Problem]]:
    """The training pools (name -> problems, from `data.sources`) and the held-out problems
    (all of `heldout_sets`, one after the other)."""
    pools = {
        name: load_source(spec, data_cfg.synthetic_size, data_cfg, seed) for name, spec in data_cfg.sources.items()
    }
    return pools, [p for problems in heldout_sets(data_cfg, seed).values() for p in problems]


def heldout_sets(data_cfg, seed: int) -> dict[str, list[Problem]]:
    """`data.heldout` as named sets of at most `heldout_size` problems: a mapping name -> spec,
    or one spec (named "heldout")."""
    specs = data_cfg.heldout if isinstance(data_cfg.heldout, dict) else {"heldout": data_cfg.heldout}
    return {name: load_source(spec, data_cfg.heldout_size, data_cfg, seed + 1, split="test")[: data_cfg.heldout_size]
            for name, spec in specs.items()}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier on the base learning rate at optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"config key 'lr_schedule': unknown schedule {schedule!r} (constant, linear, cosine)")


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # foreach=False keeps the CPU step cheap for tiny models and equal across devices.
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}"


class MetricsLog:
    """Appends one JSON object per step to metrics.jsonl (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            pass

    def truncate_after(self, step: int) -> None:
        """On resume: forget lines logged after the checkpoint's step (they will be redone)."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record.get("step", 0))


def progress(total: int, initial: int, desc: str):
    """A tqdm bar with ETA on stderr; off when stderr is not a terminal (logs, CI)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True, disable=None)
