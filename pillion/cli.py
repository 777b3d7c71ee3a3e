"""The `pillion` command line.

    pillion train [CONFIG] [key=value ...]   RL training (no arguments: the embedded CPU default)
    pillion sft [CONFIG] [key=value ...]     supervised warm-up on solutions
    pillion eval --model DIR --data FILE     pass@1 / pass@k evaluation
    pillion logprob-check --model DIR        engine vs trainer vs transformers log-probabilities
    pillion data inspect FILE                counts, missing gold answers, examples

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
only the chosen command's module is imported, so `pillion --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pillion.train.cli", "RL post-training (GRPO, DAPO, PPO, ...); no arguments runs the CPU default"),
    "sft": ("pillion.train.sft_cli", "supervised warm-up on solutions (loss on response tokens only)"),
    "eval": ("pillion.eval.cli", "sampling evaluation: pass@1, pass@k, by level and subject"),
    "logprob-check": ("pillion.rollout.check", "prove engine, trainer and transformers log-probs agree"),
    "data": ("pillion.data.cli", "inspect dataset files (counts, missing answers, examples)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pillion",
        description="pillion: RL post-training of language models on verifiable reasoning tasks.",
        epilog="Run `pillion COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command in ("train", "sft"):
        # key=value arguments and valueless flags (--resume) may come in any order.
        flags = [a for a in argv[1:] if a.startswith("-")]
        argv = [command] + [a for a in argv[1:] if not a.startswith("-")] + flags
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    # Warnings and log records as one line each: "pillion: warning: ...", no source lines.
    logging.basicConfig(format="pillion: %(message)s", level=logging.WARNING)
    warnings.formatwarning = lambda message, category, *_: f"pillion: warning: {message}\n"
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # commands that keep no state to resume (train handles its own)
        print(f"pillion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
