"""Plain helpers shared by the RL and SFT loops: devices, seeds, data, run folders, optimiser, logging.

Functions only; each loop file calls what it needs (no base class, docs/algorithms.md has the maths).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from pillion.data import read, synthetic, synthetic_code
from pillion.data.config import synthetic_levels
from pillion.data.templates import render_prompt
from pillion.errors import UserError
from pillion.fields import leaves, reject
from pillion.files import write_text_atomic, writing
from pillion.model import hub
from pillion.model.checkpoint import DEFAULT_MODEL, resolve_model  # noqa: F401 (re-exported for the loops)
from pillion.problem import Problem
from pillion.train import trackers

log = logging.getLogger("pillion.train")


class RunError(UserError):
    """A user mistake about the run itself (its folder, its device); the message says what to do."""


DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str, group=None) -> None:
    """A `device` key's value (the config check; `resolve_device` asks the machine at run time)."""
    if DEVICE_NAMES.fullmatch(name) is None:
        raise reject(name, "is not a device", "auto, cpu, cuda or cuda:N")


def resolve_device(name: str, key: str = "config key 'device'") -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:N) asks for, on this machine; one that is not
    there is a RunError naming `key` (a config key, or a command's --device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if DEVICE_NAMES.fullmatch(name) is None:
        raise RunError(f"{key}: {name!r} is not a device; expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise RunError(f"{key}: {name!r} requested but this machine has {count} CUDA device(s)")
    return device


def resolve_devices(cfg) -> torch.device:
    """Every device key of a config (those checked by `check_device`: device, critic.device) on
    this machine, before anything loads; returns the run's device (`device`)."""
    for leaf in leaves(cfg):
        if leaf.spec is not None and leaf.spec.check is check_device and leaf.key != "device":
            if leaf.value != "auto":
                resolve_device(leaf.value, f"config key '{leaf.key}'")
    return resolve_device(cfg.device)


def model_folder(cfg) -> Path:
    """The folder of `cfg.model` (model/checkpoint.py `resolve_model`). A Hugging Face Hub id is
    pinned in place to the commit it fetched (`org/name@<commit>`), so that the run's config.yaml
    and report name the exact weights and a resumed run loads them again."""
    folder = resolve_model(cfg.model)
    pin = hub.pinned(cfg.model, folder)
    if pin is not None and pin != cfg.model:
        print(f"model {cfg.model}: Hugging Face Hub revision {pin.partition('@')[2]} ({folder})")
        cfg.model = pin
    return folder


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def load_source(spec: str, size: int, data_cfg, seed: int, split: str = "train", key: str = "data.sources"
                ) -> list[Problem]:
    """Problems for one data spec: "synthetic:1,2,3" (levels), "synthetic_code:1,2" or a dataset file.
    A synthetic level the curriculum does not have is a RunError naming the config `key`."""
    try:
        synthetic_levels(spec)
    except ValueError as e:
        raise RunError(f"config key '{key}': {e}") from None
    if spec.startswith("synthetic_code"):  # the code curriculum; before the "synthetic" prefix test
        levels = tuple(int(x) for x in spec.partition(":")[2].split(",") if x) or (1, 2)
        return synthetic_code.generate(size, levels=levels, seed=seed, split=split)
    if spec.startswith("synthetic"):
        levels = tuple(int(x) for x in spec.partition(":")[2].split(",") if x) or (1, 2, 3)
        return synthetic.generate(size, levels=levels, seed=seed, split=split)
    return read(spec, format=data_cfg.format, on_error=data_cfg.on_error)


def drop_long_prompts(problems: list[Problem], name: str, tokenizer, template: str, limit: int) -> list[Problem]:
    """Problems whose rendered prompt fits in `limit` tokens; the others are dropped with one
    warning that counts them and names the first few (a prompt past the model's context would
    otherwise fail deep inside the engine, after minutes)."""
    prompts = [render_prompt(p, template, tokenizer) for p in problems]
    # A token covers at least one byte of UTF-8 text (byte-level BPE, SentencePiece with byte
    # fallback), so only prompts with more bytes than the limit (less a margin for special
    # tokens) can be too long: the others are not tokenised at all.
    lengths = [len(text.encode("utf-8")) for text in prompts]
    check = [i for i, n in enumerate(lengths) if n > limit - 8]
    if check:
        encoded = tokenizer([prompts[i] for i in check], add_special_tokens=False)["input_ids"]
        for i, ids in zip(check, encoded):
            lengths[i] = len(ids)
    kept = [p for p, n in zip(problems, lengths) if n <= limit]
    if len(kept) < len(problems):
        long = [(p.id, n) for p, n in zip(problems, lengths) if n > limit]
        shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in long[:3])
        log.warning("%s: dropped %d of %d problems whose prompt exceeds data.max_prompt_tokens=%d: %s%s",
                    name, len(long), len(problems), limit, shown, ", ..." if len(long) > 3 else "")
    return kept


def load_data(data_cfg, seed: int, tokenizer=None, max_prompt_tokens: int | None = None
              ) -> tuple[dict[str, list[Problem]], list[Problem]]:
    """The training pools (`load_pools`) and the held-out problems (every set of `heldout_sets`,
    one after the other)."""
    pools = load_pools(data_cfg, seed, tokenizer, max_prompt_tokens)
    sets = heldout_sets(data_cfg, seed, tokenizer, max_prompt_tokens)
    return pools, [p for problems in sets.values() for p in problems]


def load_pools(data_cfg, seed: int, tokenizer=None, max_prompt_tokens: int | None = None
               ) -> dict[str, list[Problem]]:
    """The training pools (name -> problems, from `data.sources`), without the problems whose
    prompt is longer than `max_prompt_tokens` (when a tokenizer is given)."""
    pools = {name: load_source(spec, data_cfg.synthetic_size, data_cfg, seed)
             for name, spec in data_cfg.sources.items()}
    if tokenizer is not None and max_prompt_tokens is not None:
        pools = {name: drop_long_prompts(problems, name, tokenizer, data_cfg.template, max_prompt_tokens)
                 for name, problems in pools.items()}
    for name, problems in pools.items():
        if not problems:
            raise RunError(f"data source {name!r} ({data_cfg.sources[name]}) has no usable problems")
    return pools


def heldout_sets(data_cfg, seed: int, tokenizer=None, max_prompt_tokens: int | None = None
                 ) -> dict[str, list[Problem]]:
    """`data.heldout` as named sets of at most `heldout_size` problems: a mapping name -> spec,
    or one spec (named "heldout"); long prompts dropped as in `load_data`. heldout_size=0: no set
    (the run has no held-out evaluation)."""
    if data_cfg.heldout_size == 0:
        return {}
    specs = data_cfg.heldout if isinstance(data_cfg.heldout, dict) else {"heldout": data_cfg.heldout}
    sets = {}
    for name, spec in specs.items():
        key = f"data.heldout.{name}" if isinstance(data_cfg.heldout, dict) else "data.heldout"
        problems = load_source(spec, data_cfg.heldout_size, data_cfg, seed + 1, split="test", key=key)
        if tokenizer is not None and max_prompt_tokens is not None:
            label = "held-out set" if len(specs) == 1 else f"held-out set {name!r}"
            problems = drop_long_prompts(problems, label, tokenizer, data_cfg.template, max_prompt_tokens)
        sets[name] = problems[: data_cfg.heldout_size]
    return sets


def prompt_budget(data_cfg, context: int, max_new_tokens: int) -> int:
    """data.max_prompt_tokens, by default the model's context minus the generation budget."""
    budget = data_cfg.max_prompt_tokens if data_cfg.max_prompt_tokens is not None else context - max_new_tokens
    if budget < 1:
        raise RunError(f"no room for a prompt: the model's context is {context} tokens and max_new_tokens "
                       f"is {max_new_tokens}; lower max_new_tokens")
    return budget


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------

def default_run_dir(prefix: str) -> Path:
    path = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}"
    n = 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = path.with_name(f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}-{n}")
    return path


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "metrics.jsonl").is_file()


def plan_run_dir(out: str | None, prefix: str, resume: bool, overwrite: bool) -> Path:
    """The run folder to use, decided (and checked) before anything loads; nothing is created.

    out of an existing run needs --resume (continue it) or --overwrite (start over); --resume
    needs a run to continue. So two runs never share a folder, metrics or checkpoints."""
    if resume:
        if not out:
            raise RunError("--resume needs out=DIR (the run folder to continue)")
        path = Path(out)
        if not _is_run(path):
            raise RunError(f"nothing to resume in {path}: no run there (no config.yaml); check out=")
        return path
    path = Path(out) if out else default_run_dir(prefix)
    if path.exists() and not path.is_dir():
        raise RunError(f"out={path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not _is_run(path):
            raise RunError(f"out={path} is a folder that holds other files, not a pillion run; choose another out=")
        if not overwrite:
            raise RunError(f"{path} already holds a run; continue it with --resume, or start over with --overwrite "
                           "(deletes it)")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"cannot create the run folder {path}: {parent} is not a writable folder")
    return path


def create_run_dir(path: Path, overwrite: bool) -> None:
    """Create the planned run folder (after config, model and data have loaded)."""
    if overwrite and path.is_dir() and _is_run(path):
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run folder {path}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------------
# Optimisation and logging
# ---------------------------------------------------------------------------------------------

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


class MetricsLog:
    """Appends one JSON object per step to metrics.jsonl, and a copy to the trackers `log_cfg`
    turns on (TensorBoard, W&B: pillion/train/trackers.py; none by default).

    Each record is one `write` of one line, so a process killed mid-write leaves at most a
    partial last line; `truncate_after` (on resume) drops it with the steps after the checkpoint."""

    def __init__(self, run_dir: Path, log_cfg=None, config: dict | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.trackers = trackers.open_trackers(run_dir, log_cfg, config)

    def truncate_after(self, step: int) -> None:
        """On resume: forget lines logged after the checkpoint's step (they will be redone) and a
        partial last line left by a kill; a malformed line elsewhere is an error naming it."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        kept = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                if n == len(lines):  # the unterminated last line: a write cut short
                    log.warning("%s: dropped a partial last line (the run was killed while writing it)", self.path)
                    continue
                raise RunError(f"{self.path}, line {n}: not a JSON record; fix or remove the line") from None
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with writing(self.path), self.path.open("a", encoding="utf-8") as f:  # a full disk: one line
            f.write(json.dumps(record) + "\n")
        self.trackers.log(record)

    def close(self) -> None:
        self.trackers.close()


def progress(total: int, initial: int, desc: str):
    """A tqdm bar with ETA on stderr; off when stderr is not a terminal (logs, CI)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True, disable=None)
