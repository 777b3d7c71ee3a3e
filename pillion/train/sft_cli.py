"""`pillion sft [CONFIG] [key=value ...] [--resume | --overwrite]`: see pillion/train/sft.py."""

from __future__ import annotations

import argparse
import sys

from pillion.train.cli import resolved, run_resumable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Supervised warm-up on worked solutions (loss on response tokens only).\n"
        "Keys are those of pillion/config.py SFTConfig, e.g. model=DIR steps=1000 lr=1e-5\n"
        "data.sources='{numina: numina.parquet}', or init=tiny to start from a fresh tiny model.\n\n"
        "A run lives in out=DIR and saves a checkpoint every save_every steps: --resume continues it\n"
        "(its saved config.yaml, then your overrides, e.g. steps=2000) at any number of ranks. A\n"
        "resumed run keeps its configuration: only steps, save_every, max_bad_steps, threads, log.* and\n"
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
    from pillion.train.sft import sft
    from pillion.train.state import RunInterrupted, RunStopped

    cfg, _, _ = resolved(args, config_lib.SFTConfig, "sft", preset_key=None)

    def start() -> int:
        try:
            sft(cfg, resume=args.resume, overwrite=args.overwrite)
        except RunStopped as e:
            print(f"pillion sft: {e}", file=sys.stderr)
            return 1
        return 0

    return run_resumable("sft", start, RunInterrupted)
