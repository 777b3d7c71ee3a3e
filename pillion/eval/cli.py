"""`pillion eval`: sample k answers per problem from a model folder and report pass@1 / pass@k.

    pillion eval --model DIR --data math500.jsonl                          # MATH-500 protocol
    pillion eval --model runs/RUN/checkpoints/step-000060 --data synthetic:200   # a checkpoint of a run
    pillion eval --model DIR --data synthetic:64 --template qa --k 8 --json  # synthetic held-out set

One process, CPU or one GPU; there is no torchrun mode (evaluation is generation-bound).

--model takes what `pillion train model=` takes: a Hugging Face folder, a run's checkpoint (a
LoRA run's is a PEFT adapter folder: its base plus the adapters), a run folder (its newest
checkpoint; an SFT run's final model), or a Hugging Face Hub id `org/name[@revision]`
(model/hub.py; the commit it resolved to is recorded in eval.json).

A model folder written by pillion (a run's checkpoint, an SFT result) records the prompt
template and answer style it was trained with (pillion.json); they are used unless
--template / --answer-style say otherwise. Other folders default to the plain template.

Defaults follow docs/algorithms.md §14: k=4 samples per problem at temperature 0.7 and
top-p 0.95 (Perplexity's MATH-500 protocol), at most 1024 new tokens. pass@1 is the mean
accuracy over all k samples; pass@k the fraction of problems with at least one correct sample.
Writes eval.json (the full result, with the protocol and a few samples) and eval.md (a table
by level and subject) into --out (default runs/eval-<model>-<data>); with --json the JSON is the
only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pillion.errors import UserError
from pillion.eval.samples import EvalConfig
from pillion.fields import option, option_like

SYNTHETIC_PREFIX = "synthetic:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pillion.data.formats import FORMATS

    defaults = EvalConfig()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("--model", required=True,
                        help="Hugging Face model folder, a run's checkpoint (LoRA too), a run folder, or a Hub id "
                             "org/name[@revision]")
    parser.add_argument("--data", required=True,
                        help="dataset file (.jsonl/.json/.parquet), or synthetic:N for N held-out synthetic "
                             "problems (levels 1-3, test split)")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset schema (default: detect)")
    parser.add_argument("--k", type=option_like(EvalConfig, "k"), default=defaults.k,
                        help=f"samples per problem (default {defaults.k})")
    parser.add_argument("--temperature", type=option_like(EvalConfig, "temperature"), default=defaults.temperature,
                        help=f"sampling temperature (default {defaults.temperature}, MATH-500 protocol)")
    parser.add_argument("--top-p", type=option_like(EvalConfig, "top_p"), default=defaults.top_p,
                        help=f"nucleus top-p in (0, 1] (default {defaults.top_p})")
    parser.add_argument("--max-new-tokens", type=option_like(EvalConfig, "max_new_tokens"),
                        default=defaults.max_new_tokens,
                        help=f"generation budget per sample (default {defaults.max_new_tokens})")
    parser.add_argument("--template", default=None,
                        help="prompt template: plain, chat, qa, or a string containing {question} "
                             "(default: the one the model was trained with, else plain)")
    parser.add_argument("--answer-style", default=None,
                        help="how the final answer is found in a completion (default: the one the model was "
                             "trained with, else the grader's default)")
    parser.add_argument("--limit", type=option(low=1), default=None, help="evaluate only the first N problems")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"sampling seed (default {defaults.seed})")
    parser.add_argument("--batch-prompts", type=option_like(EvalConfig, "batch_prompts"),
                        default=defaults.batch_prompts,
                        help=f"prompts per generate call (default {defaults.batch_prompts}); changes the draws")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weights dtype (default: as stored)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", default="auto", type=_threads,
                        help="CPU intra-op threads: a number, or auto (default): the cores other work leaves free, "
                             "one for tiny models")
    parser.add_argument("--out", default=None,
                        help="output folder for eval.json and eval.md (default: runs/eval-<model name>-<data name>)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, and nothing else, on stdout")


def load_problems(data: str, format: str = "auto", limit: int | None = None):
    """Problems from a file or `synthetic:N`, truncated to `limit`."""
    from pillion.data import generate, read

    if data.startswith(SYNTHETIC_PREFIX):
        count = data[len(SYNTHETIC_PREFIX):]
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"--data {data!r}: expected synthetic:N with N >= 1")
        problems = generate(int(count), levels=(1, 2, 3), split="test")
    else:
        problems = read(data, format)
    return problems[:limit] if limit is not None else problems


def default_out(model: str, data: str) -> Path:
    """runs/eval-<model folder name>-<data name>: beside the training runs, never inside the model
    folder (which may be read-only) nor loose in the working directory. A Hub id is named by its
    repository's name."""
    from pillion.model import hub

    model_name = model.partition("@")[0].split("/")[-1] if hub.is_hub_id(model) else Path(model).resolve().name
    data_name = data.replace(":", "-") if data.startswith(SYNTHETIC_PREFIX) else Path(data).stem
    return Path("runs") / f"eval-{model_name}-{data_name}"


def _threads(value: str) -> int | str:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, got {value!r}")


def run(args: argparse.Namespace) -> int:
    """Every input is checked (and the model loaded) before sampling starts; a mistake is a
    UserError, one line from pillion/cli.py."""
    import torch

    from pillion import threads
    from pillion.data.templates import resolve_template
    from pillion.eval.evaluate import evaluate
    from pillion.eval.provenance import model_record
    from pillion.eval.report import markdown_table
    from pillion.files import check_writable, write_text_atomic
    from pillion.model import hub
    from pillion.model.checkpoint import load_model, read_recipe, resolve_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rewards import RewardConfig
    from pillion.rewards.extract import STYLES
    from pillion.rollout.engine import Engine
    from pillion.train.common import drop_long_prompts, resolve_device

    device = str(resolve_device(args.device or "auto", "--device"))  # one that is not there: one line, now
    folder = resolve_model(args.model)  # "default", a folder, a LoRA checkpoint, a run folder, a Hub id
    name = hub.pinned(args.model, folder) or str(folder)  # a Hub id: the commit it resolved to
    recipe = read_recipe(folder)  # how the model was trained, when pillion trained it
    template = args.template or recipe.get("template", "plain")
    reward_cfg = RewardConfig()
    reward_cfg.answer_style = args.answer_style or recipe.get("answer_style", reward_cfg.answer_style)
    try:
        resolve_template(template)  # fail on a bad template or style before loading anything
    except ValueError as e:
        raise UserError(f"--template: {e}") from None
    if reward_cfg.answer_style not in STYLES:
        raise UserError(f"--answer-style {reward_cfg.answer_style!r}: expected one of {', '.join(STYLES)}")
    out = check_writable(args.out or default_out(args.model, args.data), "the output folder")
    problems = load_problems(args.data, args.format, args.limit)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=args.dtype, device=device).eval()
    # A prompt longer than the model's context (a 5 MB row) is dropped with a counted warning, as in training.
    budget = model.cfg.max_position_embeddings - args.max_new_tokens
    if budget < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: no room for a prompt in the model's context of "
                        f"{model.cfg.max_position_embeddings} tokens")
    problems = drop_long_prompts(problems, args.data, tokenizer, template, budget)
    if not problems:
        raise UserError(f"no problems to evaluate in {args.data}")

    chosen = threads.apply(threads.choose(args.threads, torch.device(device)))
    engine = Engine(model, tokenizer, eos_token_ids(folder, tokenizer))
    cfg = EvalConfig(temperature=args.temperature, top_p=args.top_p, k=args.k, max_new_tokens=args.max_new_tokens,
                     seed=args.seed, batch_prompts=args.batch_prompts)
    print(f"pillion eval: {len(problems)} problems x {cfg.k} samples, {name} on {device}, template {template!r}, "
          f"answers graded in the {reward_cfg.answer_style!r} style, {chosen.line()}", file=sys.stderr)
    result = evaluate(engine, problems, cfg, template=template, reward_cfg=reward_cfg)
    result = {**result, "model": name, "data": args.data, "answer_style": reward_cfg.answer_style,
              "threads": chosen.threads, **model_record(folder)}

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(result, indent=2) + "\n")
    table = markdown_table(result)
    write_text_atomic(out / "eval.md", f"# Evaluation of {name} on {args.data}\n\n{table}")
    print(f"pillion eval: wrote {out / 'eval.json'} and {out / 'eval.md'}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(table, end="")
    return 0
