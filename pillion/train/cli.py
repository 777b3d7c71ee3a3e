"""`pillion train [CONFIG] [key=value ...] [--resume | --overwrite]`: see pillion/train/rl.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# The presets are the YAML files of pillion/configs (read here without importing pillion.config,
# which imports torch: every command's parser is built with this help text).
PRESETS = ", ".join(sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "RL post-training. With no arguments: the embedded CPU default (a tiny SFT-warmed model\n"
        "learns arithmetic with GRPO in a few minutes; pass@1 on held-out problems is printed\n"
        "before and after, and a report is written to the run directory).\n\n"
        f"Presets (algo=NAME): {PRESETS}.\n"
        "Keys are those of pillion/config.py TrainConfig, e.g. model=DIR steps=200 group_size=16\n"
        "loss.clip_high=0.28 reward.incorrect=-1 data.sources='{gsm8k: train.jsonl}' device=cuda.\n"
        "The formulas behind every key and preset: docs/algorithms.md.\n\n"
        "A run lives in out=DIR (default runs/<time>-<algo>): an existing run is continued with\n"
        "--resume (its saved config.yaml, then your overrides, e.g. steps=200) or replaced with\n"
        "--overwrite. A resumed run keeps its configuration: only steps, eval_every, save_every,\n"
        "max_bad_steps, threads, grading_workers, log.* and fsdp.timeout_s may change, others with\n"
        "--allow-change KEY. Ctrl-C stops at once; the run resumes from its last checkpoint."
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value",
                   help="an optional YAML config file, then overrides (later wins)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out=DIR from its newest checkpoint, with its saved config")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: let KEY (a config key or group) differ from the run's saved config")
    p.add_argument("--overwrite", action="store_true", help="delete the run in out=DIR and start it over")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def split_args(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def saved_config(overrides: list[str], command: str = "train") -> dict | None:
    """The config.yaml of the run named by out= (the base of a resumed run's config), if any. A
    run of the other command (`pillion sft` for train, `pillion train` for sft) is refused in one
    line before anything is read or written: its keys, checkpoints and metrics are another loop's."""
    from pillion import config as config_lib
    from pillion.errors import UserError

    out = dict(config_lib.parse_overrides(overrides)).get("out")
    path = Path(str(out)) / "config.yaml" if out else None
    saved = config_lib.load_yaml(path) if path is not None and path.is_file() else None
    if isinstance(saved, dict):
        kind = "train" if "algo" in saved else "sft"  # `algo` is a TrainConfig key only
        if kind != command:
            raise UserError(f"--resume: out={out} holds a `pillion {kind}` run (its config.yaml), not a `pillion "
                            f"{command}` run; continue it with `pillion {kind} {shlex.quote(f'out={out}')} --resume`, "
                            f"or give this {command} run another out=")
    return saved


def resolved(args, config_class, command: str, **resolve_kw) -> tuple:
    """(config, config file, overrides) of a `pillion train|sft` run: its options checked together,
    and on --resume the run's saved config under the new overrides, refused where a key changes
    that may not (config.check_resume)."""
    from pillion import config as config_lib
    from pillion.errors import UserError

    config_file, overrides = split_args(args.args)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if args.allow_change and not args.resume:
        raise UserError("--allow-change goes with --resume (a new run takes any key=value)")
    base = saved_config(overrides, command) if args.resume else None  # the other command's run: refused
    cfg = config_lib.resolve(config_class, config_file, overrides, base=base, **resolve_kw)
    if base is not None:  # what the run started with, against what this resume asks for
        config_lib.check_resume(config_lib.resolve(config_class, base=base, **resolve_kw), cfg, args.allow_change)
    return cfg, config_file, overrides


def run_resumable(command: str, start, interrupted: type[Exception]) -> int:
    """start() -> exit code, with the two stops that `--resume` continues said in one line that
    names the command to type: a full disk (the last complete checkpoint is intact) and Ctrl-C
    (`interrupted`, exit 130). The run folder keeps the resolved config, so out= is all a resume needs."""
    from pillion.files import DiskFullError

    def resume(run_dir) -> str:
        return f"pillion {command} {shlex.quote(f'out={run_dir}')} --resume"

    try:
        return start()
    except DiskFullError as e:
        if e.run_dir is None:
            raise
        raise DiskFullError(f"{e}; free some space, then continue with: {resume(e.run_dir)}") from None
    except interrupted as e:
        print(f"pillion {command}: {e}; resume with: {resume(e.run_dir)}", file=sys.stderr)
        return 130


def run(args) -> int:
    from pillion import config as config_lib

    cfg, config_file, overrides = resolved(args, config_lib.TrainConfig, "train")
    if args.print_config:
        print(config_lib.dumps(cfg))
        return 0
    from pillion.train.phases import is_phased, run_phases
    from pillion.train.rl import train
    from pillion.train.state import RunInterrupted, RunStopped

    def start() -> int:
        try:
            if is_phased(cfg):  # data.stages names presets: one run per phase (pillion/train/phases.py)
                run_phases(cfg, config_file, overrides, resume=args.resume, overwrite=args.overwrite)
            else:
                train(cfg, resume=args.resume, overwrite=args.overwrite)
        except RunStopped as e:
            print(f"pillion train: {e}", file=sys.stderr)
            return 1
        return 0

    return run_resumable("train", start, RunInterrupted)
