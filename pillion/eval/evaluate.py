"""Sampling evaluation: k samples per problem, graded, reduced to pass@1 and pass@k.

    from pillion.eval.evaluate import EvalConfig, evaluate, markdown_table
    result = evaluate(engine, problems, EvalConfig(k=4), template="plain")
    result["pass@1"], result["pass@k"], result["by_level"]["3"]["pass@1"]

Protocol (shared/ALGORITHMS.md §14): each problem is rendered with `render_prompt`, sampled k
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
The temperature, top-p, k and token budget are recorded with every result, as §14 asks.

Code problems go through the same protocol and record: a sample is correct when its program
passes all of the problem's tests in the sandbox (`pillion.rewards.code`). `evaluate_sets`
evaluates several named held-out sets (arithmetic and code in `algo=srpo`) one by one;
`report_entries` and `eval_metrics` name their results in report.json and metrics.jsonl.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from pillion.data.problem import Problem
from pillion.data.templates import render_prompt
from pillion.eval.passk import pass_at_k
from pillion.rewards.shaping import RewardConfig, score_batch
from pillion.rollout.engine import SamplingParams

NUM_SAMPLES_KEPT = 5  # examples stored in result["samples"]


@dataclass
class EvalConfig:
    """Evaluation sampling; the trainer embeds this as `eval.*` in its typed config."""

    temperature: float = 0.7  # MATH-500 protocol (ALGORITHMS §14)
    top_p: float = 0.95
    k: int = 4  # samples per problem
    max_new_tokens: int = 1024
    seed: int = 0
    batch_prompts: int = 64  # prompts per engine.generate call


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


def _sort_key(key: str) -> tuple[int, int | str]:
    """Numeric levels in order, then names, so "10" follows "9" and "unknown" comes last."""
    return (0, int(key)) if key.isdigit() else (1, key)


def evaluate(engine, problems: list[Problem], cfg: EvalConfig, template: str = "plain",
             reward_cfg: RewardConfig | None = None, progress: bool = True, pool=None) -> dict[str, Any]:
    """Sample cfg.k completions per problem with `engine`, grade them, return a JSON-ready dict.

    Keys: pass@1, pass@k, k, n, curve {j: pass@j}, by_level {level: {pass@1, pass@k, n}},
    by_subject (same shape), mean_length (generated tokens per sample, EOS included),
    truncated (fraction of samples that hit max_new_tokens), ungradable, temperature, top_p,
    max_new_tokens, seed, template, samples (up to 5: question, gold, completion, extracted,
    correct). `pool` (a rewards.GradingPool) grades symbolic answers in parallel.
    """
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if cfg.k < 1 or cfg.batch_prompts < 1:
        raise ValueError(f"k and batch_prompts must be >= 1, got k={cfg.k}, batch_prompts={cfg.batch_prompts}")
    reward_cfg = reward_cfg or RewardConfig()
    k = cfg.k
    prompts = [render_prompt(p, template, engine.tokenizer) for p in problems]
    correct_counts: list[int] = []
    lengths: list[int] = []
    truncated = 0
    ungradable = 0  # problems whose samples score correct=None
    samples: list[dict[str, Any]] = []

    starts = range(0, len(problems), cfg.batch_prompts)
    bar = tqdm(starts, desc="eval", unit="batch", file=sys.stderr, disable=None if progress else True)
    for batch_index, start in enumerate(bar):
        batch = problems[start:start + cfg.batch_prompts]
        params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + batch_index)
        completions = engine.generate(prompts[start:start + cfg.batch_prompts], params)
        if len(completions) != len(batch) * k:
            raise RuntimeError(f"engine returned {len(completions)} completions for {len(batch)} prompts x {k}")
        # Completions come prompt-major: rows i*k .. i*k+k-1 answer problem i of the batch.
        owners = [p for p in batch for _ in range(k)]
        results = score_batch(owners, completions, reward_cfg, pool=pool)
        for i, problem in enumerate(batch):
            rows = range(i * k, (i + 1) * k)
            correct_counts.append(sum(results[r].correct is True for r in rows))
            ungradable += results[i * k].correct is None
            if len(samples) < NUM_SAMPLES_KEPT:
                first = completions[i * k]
                samples.append({
                    "id": problem.id,
                    "question": problem.question,
                    "gold": problem.answer,
                    "completion": first.text,
                    "extracted": results[i * k].answer,
                    "correct": results[i * k].correct,
                })
        lengths += [len(c.ids) for c in completions]
        truncated += sum(c.finish_reason == "length" for c in completions)
        if progress:
            pass1 = sum(correct_counts) / (len(correct_counts) * k)
            bar.set_postfix(pass1=f"{pass1:.3f}")
            if bar.disable:  # no terminal (a log file, CI): one line per batch instead of the bar
                print(f"eval: batch {batch_index + 1}/{len(starts)}, {len(correct_counts)} problems, "
                      f"pass@1 so far {pass1:.3f}", file=sys.stderr, flush=True)
    bar.close()

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
        "curve": {str(j): sum(pass_at_k(k, c, j) for c in correct_counts) / len(problems) for j in curve_ks},
        "by_level": {key: _group(by_level[key], k) for key in sorted(by_level, key=_sort_key)},
        "by_subject": {key: _group(by_subject[key], k) for key in sorted(by_subject)},
        "mean_length": sum(lengths) / len(lengths),
        "truncated": truncated / len(lengths),
        "ungradable": ungradable,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "template": template,
        "samples": samples,
    }


def evaluate_sets(engine, sets: dict[str, list[Problem]], cfg: EvalConfig, template: str = "plain",
                  reward_cfg: RewardConfig | None = None, pool=None, tag: str = "") -> dict[str, dict[str, Any]]:
    """`evaluate` on each named held-out set (e.g. arithmetic and code), one line printed per
    set; returns {name: result}. The trainer's evaluations before, during and after RL."""
    results = {}
    for name, problems in sets.items():
        result = results[name] = evaluate(engine, problems, cfg, template, reward_cfg, progress=False, pool=pool)
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
    return "\n".join(lines) + "\n"
