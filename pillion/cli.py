"""The `pillion` command line.

    pillion train [CONFIG] [key=value ...]   RL training (no arguments: the embedded CPU default)
    pillion sft [CONFIG] [key=value ...]     supervised warm-up on solutions
    pillion eval --model DIR --data FILE     pass@1 / pass@k evaluation
    pillion logprob-check --model DIR        engine vs trainer vs transformers log-probabilities
    pillion data inspect FILE                counts, missing gold answers, examples
    pillion data retro-search | swirl ...    training rows from a model's revised traces, tool steps
    pillion export CKPT OUT [--merge]        a Hugging Face folder (LoRA adapters merged)

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
only the chosen command's module is imported, so `pillion --help` stays fast.

One error path for every command, here and nowhere else: a `UserError` (a bad key, option,
file, row, model folder, a full disk: pillion/errors.py), or an OS error about a path the
arguments name (an output folder under a file, a read-only folder), ends the command with one
line, `pillion <command>: <message>`, on stderr and exit status 2; a bad option is the same one
line (with the option's allowed range). Any other exception is a bug and keeps its traceback.
Under torchrun every rank runs this path: the line is printed once per node (by the first rank
to reach it), and the rank exits with status 2 before its exception can reach torchelastic's
error file, so no rank's traceback is dumped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

from pillion.errors import UserError
from pillion.files import disk_full, failed_file

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("pillion.train.cli", "RL post-training (GRPO, DAPO, PPO, ...); no arguments runs the CPU default"),
    "sft": ("pillion.train.sft_cli", "supervised warm-up on solutions (loss on response tokens only)"),
    "eval": ("pillion.eval.cli", "sampling evaluation: pass@1, pass@k, by level and subject"),
    "logprob-check": ("pillion.rollout.check", "prove engine, trainer and transformers log-probs agree"),
    "data": ("pillion.data.cli", "inspect dataset files (counts, missing answers, examples)"),
    "export": ("pillion.model.export", "write a Hugging Face folder from a checkpoint (--merge: fold LoRA adapters)"),
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as every other user error: exit status 2."""

    def error(self, message: str):
        say(f"{self.prog}: {message} (see {self.prog} --help)")
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
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


def options_last(parser: argparse.ArgumentParser, command: str, items: list[str]) -> list[str]:
    """train and sft take key=value arguments and options in any order: the options (with the
    value of one that takes a value, `--allow-change KEY`) move after the key=value arguments."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    takes_value = {s for a in sub._actions if a.nargs != 0 for s in a.option_strings}
    keys, options = [], []
    it = iter(items)
    for item in it:
        if not item.startswith("-"):
            keys.append(item)
            continue
        options.append(item)
        if item in takes_value and (value := next(it, None)) is not None:
            options.append(value)
    return [command, *keys, *options]


def user_paths(argv: list[str]) -> list[Path]:
    """Every path the arguments may name (an argument, a key=value or --option=value value), and
    runs/, where commands write by default."""
    values = [a.split("=", 1)[-1] for a in argv if a and not (a.startswith("-") and "=" not in a)]
    return [Path(v) for v in values if v] + [Path("runs")]


def _related(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def user_message(error: BaseException, argv: list[str]) -> str | None:
    """The one line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(error, UserError):
        return str(error)
    if disk_full(error):
        return f"no space left on device while writing {failed_file(error) or 'a file'}"
    if isinstance(error, OSError) and error.filename:
        names = [Path(os.fsdecode(f)) for f in (error.filename, error.filename2) if f]
        if any(_related(name, path) for name in names for path in user_paths(argv)):
            target = f"{names[0]} -> {names[1]}" if len(names) > 1 else str(names[0])
            return f"{target}: {error.strerror or error}"
    return None


def _first_on_node(line: str) -> bool:
    """Under torchrun: whether this rank is the first on its node to print `line` (a marker file,
    created exclusively, in the folder the node's ranks share with their elastic agent)."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    folder = Path(error_file).parent.parent if error_file else Path(tempfile.gettempdir())
    digest = hashlib.sha1(line.encode()).hexdigest()[:16]
    try:
        os.close(os.open(folder / f"pillion-said-{os.getppid()}-{digest}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:  # no shared folder to mark: better twice than never
        return True
    return True


def say(line: str) -> None:
    """Print a user error's one line on stderr (once per node under torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _first_on_node(line):
        return
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    if command in ("train", "sft"):
        argv = options_last(parser, command, argv[1:])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad option: its one line is printed (2)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    # Warnings and log records as one line each: "pillion: warning: ...", no source lines.
    logging.basicConfig(format="pillion: %(message)s", level=logging.WARNING)
    warnings.formatwarning = lambda message, category, *_: f"pillion: warning: {message}\n"
    module = importlib.import_module(COMMANDS[args.command][0])
    action = getattr(args, "action", None)  # `pillion data inspect`: the command's own sub-command
    name = f"pillion {args.command}" + (f" {action}" if isinstance(action, str) else "")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # commands that keep no state to resume (train handles its own)
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        line = user_message(error, argv[1:])
        if line is None:
            raise
        say(f"{name}: {line}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
