"""`pillion train [CONFIG] [key=value ...] [--resume]`: see pillion/train/rl.py."""

from __future__ import annotations

import argparse
import sys

PRESETS = "grpo, dr_grpo, dapo, ppo, vapo, rloo, reinforce_pp, gspo, raft, raft_pp, reinforce_rej, srpo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "RL post-training. With no arguments: the embedded CPU default (a tiny SFT-warmed model\n"
        "learns arithmetic with GRPO in a few minutes; pass@1 on held-out problems is printed\n"
        "before and after, and a report is written to the run directory).\n\n"
        f"Presets (algo=NAME): {PRESETS}.\n"
        "Keys are those of pillion/config.py TrainConfig, e.g. model=DIR steps=200 group_size=16\n"
        "loss.clip_high=0.28 reward.incorrect=-1 data.sources='{gsm8k: train.jsonl}' device=cuda."
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] key=value",
                   help="an optional YAML config file, then overrides (later wins)")
    p.add_argument("--resume", action="store_true", help="continue the run in out=DIR from its newest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def split_args(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def run(args) -> int:
    from pillion import config as config_lib

    config_file, overrides = split_args(args.args)
    try:
        cfg = config_lib.resolve(config_lib.TrainConfig, config_file, overrides)
    except config_lib.ConfigError as e:
        print(f"pillion train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    if args.resume and not cfg.out:
        print("pillion train: --resume needs out=DIR (the run directory to continue)", file=sys.stderr)
        return 2
    from pillion.train.rl import TrainingStopped, train

    try:
        train(cfg, resume=args.resume)
    except TrainingStopped as e:
        print(f"pillion train: {e}", file=sys.stderr)
        return 1
    return 0
