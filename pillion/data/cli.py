"""`pillion data inspect | difficulty | retro-search | swirl`: a dataset before training on it.

inspect prints the detected format, counts by source and by level, how many rows lack an
extractable gold answer, other malformed rows, and a few examples. Reads with on_error="skip",
so one bad row does not hide the rest of the report.

    pillion data inspect data/gsm8k_test.jsonl
    pillion data inspect train.parquet --format math --examples 5

difficulty measures each problem's pass rate under a model (k samples, graded as the trainer
grades) and writes the problems to a JSON-lines file in the `generic` format with `level` set
from the pass rate (pillion.eval.select: level 1 always solved ... bins + 2 never solved) and
`pass_rate`, `correct`, `k` added; the original level, if any, is kept as `original_level`.
The same pass drops, and counts, the rows without a gold answer and those whose gold the grader
cannot parse (SRPO's cleaning). Sampling defaults are `pillion train`'s (template qa,
temperature 1, 48 new tokens): use the values of the run that will train on the file. Train
on it with `data.sources={name: FILE.difficulty.jsonl} data.level_weights={2: 1, 3: 1, 4: 1}`.

    pillion data difficulty data/gsm8k_test.jsonl --k 8                      # the shipped tiny model
    pillion data difficulty train.jsonl --model Qwen/Qwen2.5-Math-1.5B --template plain \\
        --max-new-tokens 1024 --k 16 --out train.difficulty.jsonl

retro-search revises a model's traces at their thought switches and writes SFT rows with the
shortest correct version (pillion/eval/retro.py, docs/algorithms.md §18); swirl rolls out
tool-using trajectories and writes one row per action of those that reach the gold answer
(pillion/eval/swirl.py, §19). Both need a gold answer on every row, append whole rows after
each batch of --batch-prompts problems and skip, when run again, the problems already done.

    pillion data retro-search --model verbose --data train.jsonl --out revised.jsonl --k 4
    pillion data swirl --model DIR --data train.jsonl --out steps.jsonl --max-calls 2 --k 4

The output goes beside FILE by default (FILE's folder, `<stem>.<action>.jsonl`); a Hub
dataset id's output goes into the current folder. --model takes what `pillion train model=`
takes (a folder, a run's checkpoint or run folder, a Hub id).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from pillion.data.formats import FORMATS, ReadReport, read_with_report
from pillion.errors import UserError
from pillion.fields import option
from pillion.files import check_writable, write_text_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__
    parser.add_argument("action", choices=["inspect", "difficulty", "retro-search", "swirl"],
                        help="what to do with the file")
    parser.add_argument("file", nargs="?", help=".jsonl, .json or .parquet file (or a Hub id with `datasets`)")
    parser.add_argument("--data", default=None, help="the file, as an option (retro-search, swirl)")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                        help="dataset schema (default: detect from the fields)")
    parser.add_argument("--examples", type=option(low=0), default=3, help="inspect: how many examples to print")
    group = parser.add_argument_group("difficulty, retro-search, swirl")
    group.add_argument("--model", default="default",
                       help="model folder, run, checkpoint or Hub id (default: the shipped tiny model)")
    group.add_argument("--k", type=option(low=1), default=8,
                       help="samples per problem; retro-search: continuations per switch point; swirl: trajectories "
                            "per problem (default 8)")
    group.add_argument("--bins", type=option(low=1), default=3,
                       help="levels strictly between always and never solved (default 3: levels 1-5)")
    group.add_argument("--out", default=None,
                       help="output .jsonl (default: <file stem>.<action>.jsonl beside FILE)")
    group.add_argument("--template", default="qa", help="prompt template (default qa, as pillion train)")
    group.add_argument("--temperature", type=option(low=0, kind=float), default=1.0,
                       help="sampling temperature (default 1.0)")
    group.add_argument("--top-p", type=option(low=0, high=1, open="low", kind=float), default=1.0,
                       help="nucleus top-p in (0, 1] (default 1.0)")
    group.add_argument("--max-new-tokens", type=option(low=1), default=48, help="generation budget (default 48)")
    group.add_argument("--limit", type=option(low=1), default=None, help="only the first N problems of the file")
    group.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    group.add_argument("--batch-prompts", type=option(low=1), default=64,
                       help="prompts per generate call (default 64)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="weights dtype")
    group = parser.add_argument_group("retro-search")
    group.add_argument("--phrases", default=None,
                       help="thought-switch phrases, comma-separated (default: Alternatively, Wait, Let me check, Hmm, "
                            "... as English reasoning models write them; pillion/eval/retro.py)")
    group.add_argument("--suppress", type=option(low=1), default=4,
                       help="positions after a switch point where its first token is forbidden (default 4)")
    group.add_argument("--max-switches", type=option(low=1), default=8,
                       help="switch points tried per trace (default 8)")
    group = parser.add_argument_group("swirl")
    group.add_argument("--max-calls", type=option(low=1), default=2, help="tool calls per trajectory (default 2)")


def _short(text: str | None, width: int = 160) -> str:
    text = (text or "").replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 3] + "..."


def print_report(report: ReadReport, examples: int, out: TextIO) -> None:
    problems = report.problems
    missing = [s for s in report.skipped if s.missing_answer]
    broken = [s for s in report.skipped if not s.missing_answer]
    print(f"file:     {report.path}", file=out)
    print(f"format:   {report.format}", file=out)
    print(f"rows:     {report.rows} ({len(problems)} problems, {len(report.skipped)} skipped)",
          file=out)
    print(f"without gold answer: {len(missing)}" +
          (f" (rows {', '.join(str(s.row) for s in missing[:10])}"
           f"{' ...' if len(missing) > 10 else ''})" if missing else ""), file=out)
    print(f"malformed rows: {len(broken)}", file=out)
    for s in broken[:10]:
        print(f"  row {s.row}: {s.field or '-'}: {s.message}", file=out)
    kinds = Counter(p.kind for p in problems)
    if set(kinds) != {"math"}:
        print("by kind:  " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())), file=out)
    print("by source:", file=out)
    for name, n in sorted(Counter(p.source for p in problems).items()):
        print(f"  {name:<20} {n}", file=out)
    print("by level:", file=out)
    levels = Counter(p.level for p in problems)
    for level in sorted(levels, key=lambda lv: (lv is None, lv or 0)):
        print(f"  {'none' if level is None else level:<20} {levels[level]}", file=out)
    for p in problems[:examples]:
        print(f"--- example {p.id} (level {p.level})", file=out)
        print(f"question: {_short(p.question)}", file=out)
        print(f"answer:   {_short(p.answer)}", file=out)
        if p.tests:
            print(f"tests:    {len(p.tests)}", file=out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if (args.file is None) == (args.data is None):
        raise UserError("name the data file once, as FILE or as --data FILE")
    args.file = args.file or args.data
    if args.action != "inspect":  # the output can be written: checked before the file is read
        args.out = check_writable(args.out or default_out(args.file, args.action), "the output file", folder=False)
    report = read_with_report(args.file, format=args.format, on_error="skip")
    if args.action == "difficulty":
        return difficulty(args, report, out)
    if args.action in ("retro-search", "swirl"):
        return generate_data(args, report, out)
    print_report(report, args.examples, out)
    return 0


def default_out(file: str, action: str = "difficulty") -> Path:
    """<stem>.<action>.jsonl beside FILE (a Hub dataset id: in the current folder)."""
    path = Path(file)
    return (path.parent if path.exists() else Path(".")) / f"{path.stem}.{action}.jsonl"


def _row(problem, correct: int, k: int, level: int) -> dict:
    """A generic-format row that `read` turns back into the same problem (id, source) with `level`."""
    prefix = f"{problem.source}/"
    row = {"id": problem.id[len(prefix):] if problem.id.startswith(prefix) else problem.id,
           "source": problem.source, "question": problem.question, "answer": problem.answer}
    if problem.solution is not None:
        row["solution"] = problem.solution
    if problem.kind == "code":
        row.update(kind="code", tests=problem.tests)
    row.update(level=level, pass_rate=correct / k, correct=correct, k=k)
    if problem.level is not None:
        row["original_level"] = problem.level
    row.update({key: value for key, value in problem.meta.items() if key not in row})
    return row


def difficulty(args: argparse.Namespace, report: ReadReport, out: TextIO) -> int:
    """Pass rates and levels for every problem with a gradable gold; see the module docstring."""
    from pillion.data.templates import ANSWER_STYLE, resolve_template
    from pillion.eval.samples import EvalConfig
    from pillion.eval.select import difficulty_level, gold_issue, pass_counts
    from pillion.model.checkpoint import load_model, resolve_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rewards import GradingPool, RewardConfig
    from pillion.rollout.engine import Engine
    from pillion.train.common import drop_long_prompts, resolve_device

    # Cleaning counts cover the whole file; --limit then takes the first N problems left.
    no_gold = [s for s in report.skipped if s.missing_answer]
    malformed = [s for s in report.skipped if not s.missing_answer]
    issues = {p.id: gold_issue(p.answer) for p in report.problems if p.kind == "math"}
    unparseable = [p for p in report.problems if issues.get(p.id)]
    gradable = [p for p in report.problems if not issues.get(p.id)]
    kept = gradable[:args.limit] if args.limit is not None else gradable
    device = str(resolve_device(args.device or "auto", "--device"))
    try:
        resolve_template(args.template)
    except ValueError as e:
        raise UserError(f"--template: {e}") from None
    model_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.dtype, device=device).eval()
    kept = drop_long_prompts(kept, args.file, tokenizer, args.template,
                             model.cfg.max_position_embeddings - args.max_new_tokens)
    target = args.out
    print(f"file:     {report.path} ({report.format}, {report.rows} rows)", file=out)
    print(f"dropped:  {len(no_gold)} without gold answer, {len(unparseable)} with a gold the grader cannot parse, "
          f"{len(malformed)} malformed rows", file=out)
    for p in unparseable[:10]:
        print(f"  {p.id}: {issues[p.id]}: {p.answer[:80]!r}", file=out)
    if len(kept) < len(gradable):
        print(f"limit:    the first {len(kept)} of {len(gradable)} gradable problems", file=out)
    if not kept:
        raise UserError(f"no problem left to score in {args.file}")

    engine = Engine(model, tokenizer, eos_token_ids(model_dir, tokenizer))
    sampling = EvalConfig(temperature=args.temperature, top_p=args.top_p, k=args.k,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, batch_prompts=args.batch_prompts)
    start = time.perf_counter()
    reward_cfg = RewardConfig(answer_style=ANSWER_STYLE)  # graded as the trainer grades
    pool = GradingPool(workers=1, timeout=reward_cfg.timeout)
    try:
        counts = pass_counts(engine, kept, sampling, args.template, reward_cfg, pool=pool, progress=True)
    finally:
        pool.close()
    seconds = time.perf_counter() - start
    levels = [difficulty_level(c, args.k, args.bins) for c in counts]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, "".join(json.dumps(_row(problem, correct, args.k, level)) + "\n"
                                      for problem, correct, level in zip(kept, counts, levels)))
    print(f"scored:   {len(kept)} problems x {args.k} samples in {seconds:.1f} s ({model_dir} on {device}, "
          f"template {args.template!r}, temperature {args.temperature}, max {args.max_new_tokens} new tokens)",
          file=out)
    print(f"mean pass rate: {sum(counts) / (len(counts) * args.k):.4f}", file=out)
    print(f"pass rate (correct of {args.k}):", file=out)
    by_count = Counter(counts)
    for c in range(args.k + 1):
        print(f"  {c:>3}/{args.k:<3} {by_count[c]}", file=out)
    print("by level:", file=out)
    by_level = Counter(levels)
    for level in range(1, args.bins + 3):
        print(f"  {level:<3} {by_level[level]}", file=out)
    print(f"wrote:    {target}", file=out)
    return 0


def generate_data(args: argparse.Namespace, report: ReadReport, out: TextIO) -> int:
    """`retro-search` and `swirl`: a model's samples turned into training rows, appended a batch of
    problems at a time (resumable); see pillion/eval/retro.py and pillion/eval/swirl.py."""
    from tqdm import tqdm

    from pillion.data import swirl
    from pillion.data.templates import resolve_template
    from pillion.eval import retro
    from pillion.eval import swirl as swirl_data
    from pillion.model.checkpoint import load_model, resolve_model
    from pillion.model.tokenizer import eos_token_ids, load_tokenizer
    from pillion.rewards import GradingPool, RewardConfig
    from pillion.rollout.engine import Engine, SamplingParams
    from pillion.rollout.tools import Tools
    from pillion.train.common import drop_long_prompts, resolve_device

    # Both keep only what reaches the gold answer: a row without one is refused, before any work.
    if no_gold := [s for s in report.skipped if s.missing_answer]:
        raise UserError(f"{args.file}: {len(no_gold)} of {report.rows} rows have no gold answer (first: row "
                        f"{no_gold[0].row}); {args.action} keeps only samples that reach the gold answer")
    if malformed := [s for s in report.skipped if not s.missing_answer]:
        s = malformed[0]
        raise UserError(f"{args.file}, row {s.row}: field '{s.field or '-'}': {s.message}")
    try:
        resolve_template(args.template)
    except ValueError as e:
        raise UserError(f"--template: {e}") from None
    problems = report.problems[:args.limit] if args.limit is not None else report.problems
    device = str(resolve_device(args.device or "auto", "--device"))
    model_dir = resolve_model(args.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=args.dtype, device=device).eval()
    problems = drop_long_prompts(problems, args.file, tokenizer, args.template,
                                 model.cfg.max_position_embeddings - args.max_new_tokens)
    tools = Tools(max_calls=args.max_calls) if args.action == "swirl" else None
    engine = Engine(model, tokenizer, eos_token_ids(model_dir, tokenizer), tools=tools)
    target = args.out
    other = retro.sidecar(target, "unsolved" if args.action == "retro-search" else "dropped")
    done = retro.done_ids([target, other])
    todo = [p for p in problems if p.id not in done]
    print(f"file:     {report.path} ({report.format}, {len(problems)} problems; {len(problems) - len(todo)} "
          f"already in {target.name} or {other.name})", file=out)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    reward_cfg = RewardConfig()  # any answer style: the rows teach the model's own style
    cfg = retro.RetroConfig(phrases=tuple(p.strip() for p in args.phrases.split(",") if p.strip())
                            if args.phrases else retro.DEFAULT_SWITCHES, k=args.k, suppress=args.suppress,
                            max_switches=args.max_switches, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    params = SamplingParams(n=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    totals = Counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    pool = GradingPool(workers=1, timeout=reward_cfg.timeout)
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=args.action, file=sys.stderr,
               dynamic_ncols=True, disable=None)
    try:
        for start in range(0, len(todo), args.batch_prompts):
            batch = todo[start:start + args.batch_prompts]
            # Each batch's problems get their own seed: a resumed run samples what a straight one would.
            cfg.seed = params.seed = args.seed + len(problems) - len(todo) + start
            rows, others = [], []
            if args.action == "retro-search":
                for r in retro.revise(engine, batch, cfg, args.template, reward_cfg, pool):
                    if r.solution is None:
                        others.append({"problem_id": r.problem.id, "original_solution": r.original})
                        continue
                    rows.append(retro.row(r))
                    totals.update(solved=1, revised=r.revised, original_correct=r.original_correct,
                                  original_tokens=r.original_length, revised_tokens=r.length)
            else:
                for o in swirl_data.step_samples(engine, batch, params, args.template, reward_cfg, pool):
                    rows += [swirl.row(s, decode) for s in o.kept]
                    if not o.kept:
                        others.append({"problem_id": o.problem.id, "trajectories": o.trajectories})
                    totals.update(trajectories=o.trajectories, correct=o.correct, samples=len(o.kept),
                                  tool_calls=sum(o.tool_calls))
            for path, lines in ((target, rows), (other, others)):
                with open(path, "a") as f:  # whole lines after each batch: what a resumed run skips
                    f.write("".join(json.dumps(line) + "\n" for line in lines))
            bar.update(len(batch))
    finally:
        bar.close()
        pool.close()
    if args.action == "retro-search" and totals["solved"]:
        n = totals["solved"]
        print(f"revised:  {totals['revised']} of {n} solved problems ({totals['original_correct']} solved by the "
              f"first trace); mean length {totals['original_tokens'] / n:.2f} -> {totals['revised_tokens'] / n:.2f} "
              f"tokens", file=out)
    elif args.action == "swirl":
        print(f"sampled:  {totals['trajectories']} trajectories ({totals['correct']} right, {totals['tool_calls']} "
              f"tool calls); kept {totals['samples']} step samples", file=out)
    print(f"wrote:    {target} (and {other.name})", file=out)
    return 0
