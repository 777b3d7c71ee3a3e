"""`pillion sft [CONFIG] [key=value ...]`: see pillion/train/sft.py."""

from __future__ import annotations

import argparse

from pillion.train.cli import split_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Supervised warm-up on worked solutions (loss on response tokens only).\n"
        "Keys are those of pillion/config.py SFTConfig, e.g. model=DIR steps=1000 lr=1e-5\n"
        "data.sources='{numina: numina.parquet}', or init=tiny to start from a fresh tiny model."
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value", help="an optional YAML file, then overrides")
    p.add_argument("--overwrite", action="store_true", help="delete the run in out=DIR and start it over")


def run(args) -> int:
    from pillion import config as config_lib
    from pillion.train.sft import sft

    config_file, overrides = split_args(args.args)
    cfg = config_lib.resolve(config_lib.SFTConfig, config_file, overrides, preset_key=None)
    sft(cfg, overwrite=args.overwrite)
    return 0
