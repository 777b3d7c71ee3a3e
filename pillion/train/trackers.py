"""Experiment trackers beside metrics.jsonl: TensorBoard and Weights & Biases, both opt-in.

    log.tensorboard=true                                  # event files in RUN_DIR/tb
    log.wandb.project=my-project                          # a W&B run (online)
    log.wandb.project=my-project log.wandb.mode=offline   # files in RUN_DIR/wandb, no network
                                                          # (upload later: `wandb sync RUN_DIR/wandb/offline-run-*`)

    trackers = open_trackers(run_dir, cfg.log, config=config_lib.to_dict(cfg))
    trackers.log({"step": 3, "reward": 0.5, ...})   # what MetricsLog.write calls per record
    trackers.close()

metrics.jsonl and the console line stay the record of a run; trackers get a copy of each
record's finite numbers (booleans, strings and NaN are left out; "step" is the x axis). Each
is an optional extra (`pip install 'pillion[tensorboard]'`, `'pillion[wandb]'`); asking for one
that is not installed is an error at start-up, naming the extra, never a silent no-op.

W&B runs are named after the run directory and keep their id in RUN_DIR/wandb_run_id, so a
resumed run (`--resume`) continues the same W&B run. W&B refuses steps lower than one already
logged: the steps a resume redoes after its checkpoint are dropped there (metrics.jsonl, which
the loop truncates on resume, stays complete).
"""

from __future__ import annotations

import importlib
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pillion.fields import checked

WANDB_MODES = ("online", "offline", "disabled")


def _needs(module: str, extra: str):
    """A config check: the tracker a value turns on can be imported (at resolution, before any
    run folder exists), else one line naming the extra to install."""

    def check(value, group) -> None:
        if value:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ValueError(f"needs the {extra} package: pip install 'pillion[{extra}]'") from None

    return check


@dataclass
class WandbConfig:
    project: str | None = checked(None, _needs("wandb", "wandb"))  # None: no W&B run
    mode: Literal["online", "offline", "disabled"] = "online"  # offline: no network; sync later


@dataclass
class LogConfig:
    """`log.*` in the trainer and SFT configs."""

    tensorboard: bool = checked(False, _needs("torch.utils.tensorboard", "tensorboard"))  # event files in RUN_DIR/tb
    wandb: WandbConfig = field(default_factory=WandbConfig)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record, "step" excluded."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


@dataclass
class Trackers:
    """The open trackers (each None when off)."""

    tensorboard: Any = None  # torch.utils.tensorboard.SummaryWriter
    wandb: Any = None  # wandb Run

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if not values:
            return
        step = int(record.get("step", 0))
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()  # one small write per step: the files are readable mid-run
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _missing(extra: str, package: str) -> ImportError:
    return ImportError(f"log.{extra} needs the {package} package: pip install 'pillion[{extra}]'")


def open_trackers(run_dir: str | Path, cfg: LogConfig | None = None, config: dict[str, Any] | None = None) -> Trackers:
    """Open the trackers `cfg` asks for (none by default); `config` is recorded with the W&B run."""
    run_dir = Path(run_dir)
    cfg = cfg or LogConfig()
    trackers = Trackers()
    if cfg.wandb.mode not in WANDB_MODES:
        raise ValueError(f"config key 'log.wandb.mode': expected one of {', '.join(WANDB_MODES)}, "
                         f"got {cfg.wandb.mode!r}")
    if cfg.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        trackers.tensorboard = SummaryWriter(str(run_dir / "tb"))
    if cfg.wandb.project:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)  # [a-z0-9], as W&B ids
        id_file.write_text(run_id + "\n")
        trackers.wandb = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(run_dir),
                                    name=run_dir.name, id=run_id, resume="allow", config=config or {})
    return trackers
