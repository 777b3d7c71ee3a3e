"""Sampling evaluation: k samples per problem, graded, reduced to pass@1 and pass@k.

    from pillion.eval.evaluate import EvalConfig, evaluate, markdown_table
    result = evaluate(engine, problems, EvalConfig(k=4), template="plain")
    result["pass@1"], result["pass@k"], result["by_level"]["3"]["pass@1"]

Protocol (docs/algorithms.md §14): each problem is rendered with `render_prompt`, sampled k
times at temperature 0.7 and top-p 0.95 (Perplexity's MATH-500 protocol; DeepSeek-R1 uses 0.6),
and every sample is graded by `pillion.rewards.score_batch`, using only `RewardResult.correct`
(shaping terms do not enter an evaluation). Without a `reward_cfg`, answers are read in the
"fallback" style (RewardConfig's default: boxed, tags, ####, answer phrases, bold, the last
math span or number), so a model never told to box its answer is graded on what it answered.
With c correct samples out of k:

    pass@1 = mean over problems of c / k          (DeepSeek-R1's "pass@1 with k samples")
    pass@k = mean over problems of pass_at_k(k, c, k) = fraction of problems with c >= 1

`curve` holds the unbiased pass@j (Chen et al.) for j = 1, 2, 4, ... up to k, all estimated
from the same k samples. A sample whose problem cannot be graded (no gold answer, a code
problem without tests) counts as wrong; `ungradable` says how many problems that was.

Sampling is seeded per engine call with `seed + batch index`, so a result is reproducible for
a given (seed, batch_prompts) on the same hardware; changing batch_prompts changes the draws.
The temperature, top-p, k and token budget are recorded with every result, as §14 asks, and
so are: a 95% interval for pass@1 (percentile bootstrap over problems, seeded with the eval
seed) and its binomial standard error (`interval`), the behaviour metrics of all samples
(reflection phrases, length of correct and incorrect samples; pillion.eval.behaviour), the
template and its text, the prompt count, and the versions of pillion (with its git commit when
run from a checkout), math-verify, sympy, torch and transformers (`versions`). `model_record`
hashes a model folder (config.json and weight files) for the caller to add.

`sample_and_grade` is the sampling half on its own (k graded samples per problem, no
reduction); `pillion data difficulty` and `pillion.data.select` use it for pass rates.

Code problems go through the same protocol and record: a sample is correct when its program
passes all of the problem's tests in the sandbox (`pillion.rewards.code`). `evaluate_sets`
evaluates several named held-out sets (arithmetic and code in `algo=srpo`) one by one;
`report_entries` and `eval_metrics` name their results in report.json and metrics.jsonl.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import math
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pillion.data.problem import Problem
from pillion.data.templates import render_prompt, resolve_template
from pillion.eval.behaviour import DEFAULT_PHRASES, behaviour_metrics
from pillion.eval.passk import pass_at_k
from pillion.fields import bounded, free
from pillion.rewards.shaping import RewardConfig, score_batch
from pillion.rollout.engine import SamplingParams

NUM_SAMPLES_KEPT = 5  # examples stored in result["samples"]
BOOTSTRAP_RESAMPLES = 1000  # resamples of the problem set for the pass@1 interval
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # files hashed with config.json


@dataclass
class EvalConfig:
    """Evaluation sampling; the trainer embeds this as `eval.*` in its typed config."""

    temperature: float = bounded(0.7, low=0)  # MATH-500 protocol (docs/algorithms.md §14); 0: greedy
    top_p: float = bounded(0.95, low=0, high=1, open="low")
    k: int = bounded(4, low=1)  # samples per problem
    max_new_tokens: int = bounded(1024, low=1)
    seed: int = free(0)
    batch_prompts: int = bounded(64, low=1)  # prompts per engine.generate call


def _level_key(level: int | None) -> str:
    return "unknown" if level is None else str(level)


def _subject(problem: Problem) -> str:
    """MATH-500 rows carry `subject`, MATH rows `type`; other sources group by source."""
    value = problem.meta.get("subject") or problem.meta.get("type") or problem.source
    return str(value)


def _group(counts: list[int], k: int) -> dict[str, float | int]:
    """pass@1, pass@k and n for the problems whose correct-sample counts are `counts`."""
    return {
        "pass@1": sum(c / k for c in counts) / len(counts),
        "pass@k": sum(pass_at_k(k, c, k) for c in counts) / len(counts),
        "n": len(counts),
    }


def interval(counts: list[int], k: int, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """pass@1's 95% interval (percentile bootstrap over problems) and its binomial standard error.

    counts: correct samples (of k) per problem. The bootstrap draws the n problems with
    replacement `resamples` times (numpy generator seeded with `seed`) and takes the 2.5% and
    97.5% quantiles of the resampled pass@1; it keeps the k samples of a problem together, so
    problems that are easy for every sample do not count as k independent successes.
    pass@1_se = sqrt(p (1 - p) / n) over the n problems: exact for k = 1 and an upper bound for
    k > 1 (a problem's mean of k samples varies less than one Bernoulli draw).
    """
    n = len(counts)
    rates = np.asarray(counts, dtype=np.float64) / k  # [n]
    p = float(rates.mean())
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # [resamples, n]
    low, high = np.quantile(rates[draws].mean(axis=1), [0.025, 0.975])
    return {
        "pass@1_ci95": [float(low), float(high)],
        "pass@1_se": math.sqrt(max(p * (1.0 - p), 0.0) / n),
        "ci": {"method": "percentile bootstrap over problems", "resamples": resamples, "seed": seed},
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """pillion (and its git commit when run from a checkout), the grader's libraries, torch."""
    import pillion

    out = {"pillion": pillion.__version__, "pillion_commit": None}
    root = Path(pillion.__file__).resolve().parent.parent
    # A checkout: the commit says more than the version number ("+dirty" when edited). Only when
    # the package's own parent is the repository, never an enclosing repo of site-packages.
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                  text=True, timeout=5)
            if head.returncode == 0:
                dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                out["pillion_commit"] = head.stdout.strip() + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("math-verify", "sympy", "torch", "transformers"):
        out[name] = _version(name)
    return out


def model_record(model_dir: str | Path) -> dict[str, Any]:
    """{"model_hash": "sha256:...", "model_files": [...]} of a model folder.

    The hash covers config.json and the weight files (*.safetensors, *.bin, *.pt, *.pth, in name
    order), each file's name and bytes, read once in 8 MiB blocks: two folders with the same
    hash hold the same model. Tokenizer files are not included.
    """
    folder = Path(model_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name == "config.json" or
                                                                   p.name.endswith(WEIGHT_SUFFIXES)))
    if not any(p.name == "config.json" for p in files):
        raise FileNotFoundError(f"{folder}: no config.json to hash")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(8 << 20):
                digest.update(block)
        digest.update(b"\0")
    return {"model_hash": f"sha256:{digest.hexdigest()}", "model_files": [p.name for p in files]}


def _sort_key(key: str) -> tuple[int, int | str]:
    """Numeric levels in order, then names, so "10" follows "9" and "unknown" comes last."""
    return (0, int(key)) if key.isdigit() else (1, key)


@dataclass
class Samples:
    """k graded samples per problem, prompt-major: rows i*k .. i*k+k-1 answer problems[i]."""

    problems: list[Problem]
    k: int
    texts: list[str]  # [n * k]
    num_tokens: list[int]  # [n * k] generated tokens, EOS included
    finish_reasons: list[str]  # [n * k]
    correct: list[bool | None]  # [n * k] None: ungradable
    answers: list[str | None]  # [n * k] the final answer graded (RewardResult.answer); None: none found

    def counts(self) -> list[int]:
        """Correct samples per problem."""
        k = self.k
        return [sum(c is True for c in self.correct[i * k:(i + 1) * k]) for i in range(len(self.problems))]


def sample_and_grade(engine, problems: list[Problem], cfg: EvalConfig, template: str = "plain",
                     reward_cfg: RewardConfig | None = None, progress: bool = True, pool=None,
                     desc: str = "eval", world=None) -> Samples:
    """Sample cfg.k completions per problem, batch_prompts prompts per engine call, and grade them.

    world (train.parallel.World, several ranks): each rank samples a contiguous share of every
    batch with the batch's seed and its global row offset, so every row gets the sample one
    process would draw; the graded rows are then gathered, in order, on every rank."""
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if cfg.k < 1 or cfg.batch_prompts < 1:
        raise ValueError(f"k and batch_prompts must be >= 1, got k={cfg.k}, batch_prompts={cfg.batch_prompts}")
    reward_cfg = reward_cfg or RewardConfig()
    k = cfg.k
    prompts = [render_prompt(p, template, engine.tokenizer) for p in problems]
    out = Samples(problems=list(problems), k=k, texts=[], num_tokens=[], finish_reasons=[], correct=[], answers=[])
    starts = range(0, len(problems), cfg.batch_prompts)
    bar = tqdm(starts, desc=desc, unit="batch", file=sys.stderr, disable=None if progress else True)
    rows: list[int] = []  # global index of each graded row (several ranks)
    for batch_index, start in enumerate(bar):
        batch = problems[start:start + cfg.batch_prompts]
        share = len(batch) if world is None else -(-len(batch) // world.size)
        first = 0 if world is None else min(world.rank * share, len(batch))
        batch = batch[first:first + share]
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + batch_index, row_offset=first * k)
        completions = engine.generate(prompts[start + first:start + first + len(batch)], params) if batch else []
        rows += range((start + first) * k, (start + first + len(batch)) * k)
        if len(completions) != len(batch) * k:
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(batch)} prompts x {k}")
        # Completions come prompt-major: rows i*k .. i*k+k-1 answer problem i of the batch.
        owners = [p for p in batch for _ in range(k)]
        results = score_batch(owners, completions, reward_cfg, pool=pool)
        out.texts += [c.text for c in completions]
        out.num_tokens += [len(c.ids) for c in completions]
        out.finish_reasons += [c.finish_reason for c in completions]
        out.correct += [r.correct for r in results]
        out.answers += [r.answer for r in results]
        if progress:
            pass1 = sum(c is True for c in out.correct) / max(len(out.correct), 1)
            bar.set_postfix(pass1=f"{pass1:.3f}")
            if bar.disable:  # no terminal (a log file, CI): one line per batch instead of the bar
                print(f"{desc}: batch {batch_index + 1}/{len(starts)}, {len(out.correct) // k} problems, "
                      f"pass@1 so far {pass1:.3f}", file=sys.stderr, flush=True)
    bar.close()
    return _gather(out, rows, world) if world is not None and world.size > 1 else out


def _gather(local: Samples, rows: list[int], world) -> Samples:
    """Every rank's graded rows, put back in global row order."""
    import torch.distributed as dist

    fields = ("texts", "num_tokens", "finish_reasons", "correct", "answers")
    parts: list = [None] * world.size
    dist.all_gather_object(parts, (rows, [getattr(local, f) for f in fields]))
    merged = sorted((r, [values[i] for values in columns]) for index, columns in parts for i, r in enumerate(index))
    out = Samples(problems=local.problems, k=local.k, texts=[], num_tokens=[], finish_reasons=[], correct=[],
                  answers=[])
    for f, column in zip(fields, zip(*(row for _, row in merged))):
        setattr(out, f, list(column))
    return out


def evaluate(engine, problems: list[Problem], cfg: EvalConfig, template: str = "plain",
             reward_cfg: RewardConfig | None = None, progress: bool = True, pool=None,
             phrases: Sequence[str] = DEFAULT_PHRASES, world=None) -> dict[str, Any]:
    """Sample cfg.k completions per problem with `engine`, grade them, return a JSON-ready dict.

    Keys: pass@1, pass@k, k, n, curve {j: pass@j}, by_level {level: {pass@1, pass@k, n}},
    by_subject (same shape), mean_length (generated tokens per sample, EOS included),
    truncated (fraction of samples that hit max_new_tokens), ungradable, temperature, top_p,
    max_new_tokens, seed, template, samples (up to 5: question, gold, completion, extracted,
    correct), and the records of `interval` (pass@1_ci95, pass@1_se, ci), `behaviour` (see
    pillion.eval.behaviour, with `phrases`), template_text, num_prompts and versions.
    `pool` (a rewards.GradingPool) grades symbolic answers in parallel; `world`: several ranks
    share the sampling (`sample_and_grade`) and all return the same result.
    """
    reward_cfg = reward_cfg or RewardConfig()
    graded = sample_and_grade(engine, problems, cfg, template, reward_cfg, progress, pool, world=world)
    k = cfg.k
    correct_counts = graded.counts()
    # A problem is ungradable when its samples score correct=None (no gold, no tests).
    ungradable = sum(graded.correct[i * k] is None for i in range(len(problems)))
    samples: list[dict[str, Any]] = []
    for i, problem in enumerate(problems[:NUM_SAMPLES_KEPT]):
        text = graded.texts[i * k]
        samples.append({
            "id": problem.id,
            "question": problem.question,
            "gold": problem.answer,
            "completion": text,
            "extracted": graded.answers[i * k],
            "correct": graded.correct[i * k],
        })
    lengths = graded.num_tokens

    by_level: dict[str, list[int]] = defaultdict(list)
    by_subject: dict[str, list[int]] = defaultdict(list)
    for problem, c in zip(problems, correct_counts):
        by_level[_level_key(problem.level)].append(c)
        by_subject[_subject(problem)].append(c)
    overall = _group(correct_counts, k)
    curve_ks = sorted({j for j in (2**e for e in range(k.bit_length())) if j <= k} | {k})
    return {
        "pass@1": overall["pass@1"],
        "pass@k": overall["pass@k"],
        "k": k,
        "n": len(problems),
        **interval(correct_counts, k, seed=cfg.seed),
        "curve": {str(j): sum(pass_at_k(k, c, j) for c in correct_counts) / len(problems) for j in curve_ks},
        "by_level": {key: _group(by_level[key], k) for key in sorted(by_level, key=_sort_key)},
        "by_subject": {key: _group(by_subject[key], k) for key in sorted(by_subject)},
        "mean_length": sum(lengths) / len(lengths),
        "truncated": sum(r == "length" for r in graded.finish_reasons) / len(lengths),
        "ungradable": ungradable,
        "behaviour": behaviour_metrics(graded.texts, graded.correct, lengths, phrases),
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "template": template,
        "template_text": resolve_template(template),
        "num_prompts": len(problems),
        "answer_style": reward_cfg.answer_style,
        "versions": versions(),
        "samples": samples,
    }


def evaluate_sets(engine, sets: dict[str, list[Problem]], cfg: EvalConfig, template: str = "plain",
                  reward_cfg: RewardConfig | None = None, pool=None, tag: str = "", world=None
                  ) -> dict[str, dict[str, Any]]:
    """`evaluate` on each named held-out set (e.g. arithmetic and code), one line printed per
    set; returns {name: result}. The trainer's evaluations before, during and after RL."""
    results = {}
    for name, problems in sets.items():
        result = results[name] = evaluate(engine, problems, cfg, template, reward_cfg, progress=False, pool=pool,
                                          world=world)
        label = f" [{name}]" if len(sets) > 1 else ""
        at_k = f" pass@{result['k']} {result['pass@k']:.3f}" if result["k"] > 1 else ""
        print(f"eval {tag}{label}: pass@1 {result['pass@1']:.3f}{at_k} on {result['n']} held-out problems")
    return results


def report_entries(results: dict[str, dict[str, Any]], when: str) -> dict[str, Any]:
    """report.json keys for the evaluations `when` ("before" or "after") training:
    `eval_<when>` and `pass1_<when>` for the first (or only) set, and with several sets
    `pass1_<when>/<name>` and `eval_<when>/<name>` for each of them."""
    first = next(iter(results.values()))
    entries = {f"eval_{when}": first, f"pass1_{when}": first["pass@1"]}
    if len(results) > 1:
        for name, result in results.items():
            entries[f"pass1_{when}/{name}"] = result["pass@1"]
            entries[f"eval_{when}/{name}"] = result
    return entries


def eval_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """metrics.jsonl keys of a periodic evaluation: eval/pass@1 and eval/pass@k of the first set,
    and with several sets eval/<name>/pass@1 and eval/<name>/pass@k for each."""
    first = next(iter(results.values()))
    metrics = {"eval/pass@1": first["pass@1"], f"eval/pass@{first['k']}": first["pass@k"]}
    if len(results) > 1:
        for name, result in results.items():
            metrics[f"eval/{name}/pass@1"] = result["pass@1"]
            metrics[f"eval/{name}/pass@{result['k']}"] = result["pass@k"]
    return metrics


def markdown_table(result: dict[str, Any]) -> str:
    """Overall, per-level and (when there is more than one) per-subject rows, plus the protocol."""
    k = result["k"]

    def row(name: str, group: dict[str, Any]) -> str:
        at_k = f" {100 * group['pass@k']:.1f} |" if k > 1 else ""  # with k = 1, pass@k is pass@1
        return f"| {name} | {group['n']} | {100 * group['pass@1']:.1f} |{at_k}"

    header = f"| group | n | pass@1 (%) |{f' pass@{k} (%) |' if k > 1 else ''}"
    lines = [header, "|---|---:|---:|" + ("---:|" if k > 1 else ""), row("all", result)]
    lines += [row(f"level {key}", group) for key, group in result.get("by_level", {}).items()]
    subjects = result.get("by_subject", {})
    if len(subjects) > 1:
        lines += [row(name, group) for name, group in subjects.items()]
    lines.append("")
    lines.append(f"k={k} samples per problem, temperature {result['temperature']}, top-p {result['top_p']}, "
                 f"max {result['max_new_tokens']} new tokens, seed {result['seed']}; "
                 f"mean length {result['mean_length']:.1f} tokens.")
    lines += [line for line in _record_lines(result) if line]
    return "\n".join(lines) + "\n"


def _record_lines(result: dict[str, Any]) -> list[str]:
    """The interval, behaviour and provenance lines under the table (each when recorded)."""
    lines = []
    if "pass@1_ci95" in result:
        low, high = result["pass@1_ci95"]
        ci = result.get("ci", {})
        lines.append(f"pass@1 {100 * result['pass@1']:.1f}%, 95% CI [{100 * low:.1f}, {100 * high:.1f}] "
                     f"({ci.get('method', 'bootstrap')}, {ci.get('resamples', '?')} resamples, seed "
                     f"{ci.get('seed', '?')}); binomial standard error {100 * result['pass@1_se']:.1f} points.")
    behaviour = result.get("behaviour") or {}
    if behaviour:  # each part only when recorded (report.json may come from an older run)
        parts = []
        if "reflection_rate" in behaviour:
            parts.append(f"reflection phrases in {100 * behaviour['reflection_rate']:.1f}% of samples")
        if "reflection_count" in behaviour:
            parts.append(f"{behaviour['reflection_count']:.2f} reflection phrases per sample")
        for key, label in (("response_length_correct", "correct"), ("response_length_incorrect", "incorrect")):
            if key in behaviour:
                parts.append(f"mean length {label} {behaviour[key]:.1f}")
        if parts:
            lines.append("Behaviour: " + "; ".join(parts) + ".")
    provenance = []
    if "num_prompts" in result:
        provenance.append(f"{result['num_prompts']} prompts")
    if "template" in result:
        provenance.append(f"template {result['template']!r}")
    if result.get("model_hash"):
        provenance.append(f"model {result['model_hash'][:19]}")
    found = {k: v for k, v in (result.get("versions") or {}).items() if v}
    if found:
        provenance.append(", ".join(f"{k} {v}" for k, v in found.items()))
    if provenance:
        lines.append("Records: " + "; ".join(provenance) + ".")
    return lines
