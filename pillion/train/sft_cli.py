"""`pillion sft [CONFIG] [key=value ...] [--resume | --overwrite]`: see pillion/train/sft.py."""

from __future__ import annotations

import argparse
import shlex
import sys

from pillion.train.cli import saved_config, split_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Supervised warm-up on worked solutions (loss on response tokens only).\n"
        "Keys are those of pillion/config.py SFTConfig, e.g. model=DIR steps=1000 lr=1e-5\n"
        "data.sources='{numina: numina.parquet}', or init=tiny to start from a fresh tiny model.\n\n"
        "A run lives in out=DIR and saves a checkpoint every save_every steps: --resume continues it\n"
        "(its saved config.yaml, then your overrides, e.g. steps=2000) at any number of ranks. A\n"
        "resumed run keeps its configuration: only steps, save_every, threads, log.* and\n"
        "fsdp.timeout_s may change, others with --allow-change KEY. Ctrl-C stops at once; the run\n"
        "resumes from its last checkpoint."
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value", help="an optional YAML file, then overrides")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out=DIR from its newest checkpoint, with its saved config")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: let KEY (a config key or group) differ from the run's saved config")
    p.add_argument("--overwrite", action="store_true", help="delete the run in out=DIR and start it over")


def run(args) -> int:
    from pillion import config as config_lib
    from pillion.errors import UserError
    from pillion.files import DiskFullError
    from pillion.train.sft import SFTInterrupted, sft

    config_file, overrides = split_args(args.args)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if args.allow_change and not args.resume:
        raise UserError("--allow-change goes with --resume (a new run takes any key=value)")
    base = saved_config(overrides, "sft") if args.resume else None  # an RL run's folder: refused here
    cfg = config_lib.resolve(config_lib.SFTConfig, config_file, overrides, preset_key=None, base=base)
    if base is not None:  # what the run started with, against what this resume asks for
        config_lib.check_resume(config_lib.resolve(config_lib.SFTConfig, preset_key=None, base=base), cfg,
                                args.allow_change)
    try:
        sft(cfg, resume=args.resume, overwrite=args.overwrite)
    except DiskFullError as e:  # the last complete checkpoint is intact: say how to go on from it
        if e.run_dir is None:
            raise
        raise DiskFullError(f"{e}; free some space, then continue with: pillion sft "
                            f"{shlex.quote(f'out={e.run_dir}')} --resume") from None
    except SFTInterrupted as e:
        # The run folder keeps the resolved config, so out= is all a resume needs.
        print(f"pillion sft: {e}; resume with: pillion sft {shlex.quote(f'out={e.run_dir}')} --resume",
              file=sys.stderr)
        return 130
    return 0
