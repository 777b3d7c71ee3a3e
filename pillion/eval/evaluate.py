"""Sampling evaluation: k samples per problem, graded, reduced to pass@1 and pass@k.

    from pillion.eval.evaluate import evaluate
    from pillion.eval.report import markdown_table
    from pillion.eval.samples import EvalConfig
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

The parts, one file each: sampling and grading, shared by ranks (`samples.py`:
`sample_and_grade`, `EvalConfig`); the statistics (`passk.py`: pass@k by level and subject, the
curve, the interval); the provenance records (`provenance.py`). Sampling is seeded per engine
call with `seed + batch index`, so a result is reproducible for a given (seed, batch_prompts)
on the same hardware; changing batch_prompts changes the draws. The temperature, top-p, k and
token budget are recorded with every result, as §14 asks, and so are: a 95% interval for
pass@1 (percentile bootstrap over problems, seeded with the eval seed) and its binomial standard
error (`passk.interval`), the behaviour metrics of all samples (reflection phrases, length of
correct and incorrect samples; pillion.eval.behaviour), the template and its text, the prompt
count, and the versions of pillion (with its git commit when run from a checkout), math-verify,
sympy, torch and transformers (`provenance.versions`). `provenance.model_record` hashes a model
folder (config.json and weight files) for the caller to add.

Code problems go through the same protocol and record: a sample is correct when its program
passes all of the problem's tests in the sandbox (`pillion.rewards.code`). `evaluate_sets`
evaluates several named held-out sets (arithmetic and code in `algo=srpo`) one by one;
`report_entries` and `eval_metrics` name their results in report.json and metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pillion.data.templates import resolve_template
from pillion.eval import passk
from pillion.eval.behaviour import DEFAULT_PHRASES, behaviour_metrics
from pillion.eval.provenance import versions
from pillion.eval.samples import EvalConfig, sample_and_grade
from pillion.problem import Problem
from pillion.ranks import World
from pillion.rewards.shaping import RewardConfig

NUM_SAMPLES_KEPT = 5  # examples stored in result["samples"]
NUM_EXAMPLES = 2  # right and as many wrong samples stored in result["examples"] (the run report shows them)


def evaluate(engine, problems: list[Problem], cfg: EvalConfig, template: str = "plain",
             reward_cfg: RewardConfig | None = None, progress: bool = True, pool=None,
             phrases: Sequence[str] = DEFAULT_PHRASES, world: World | None = None) -> dict[str, Any]:
    """Sample cfg.k completions per problem with `engine`, grade them, return a JSON-ready dict.

    Keys: pass@1, pass@k, k, n, curve {j: pass@j}, by_level {level: {pass@1, pass@k, n}},
    by_subject (same shape), mean_length (generated tokens per sample, EOS included),
    truncated (fraction of samples that hit max_new_tokens), ungradable, temperature, top_p,
    max_new_tokens, seed, template, samples (up to 5: question, gold, completion, extracted,
    correct), examples (up to 2 correct and 2 wrong samples, same fields), and the records of
    `passk.interval` (pass@1_ci95, pass@1_se, ci), `behaviour` (see
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
    # A few right and wrong samples for a person to read: the first sample of each kind of the first
    # problems that have one, one sample per problem.
    examples: list[dict[str, Any]] = []
    for want in (True, False):
        firsts = (next((i * k + j for j in range(k) if graded.correct[i * k + j] is want), None)
                  for i in range(len(problems)))
        rows = [r for r in firsts if r is not None][:NUM_EXAMPLES]
        examples += [{"id": problems[r // k].id, "question": problems[r // k].question,
                      "gold": problems[r // k].answer, "completion": graded.texts[r], "extracted": graded.answers[r],
                      "correct": want} for r in rows]
    lengths = graded.num_tokens

    overall = passk.group(correct_counts, k)
    return {
        "pass@1": overall["pass@1"],
        "pass@k": overall["pass@k"],
        "k": k,
        "n": len(problems),
        **passk.interval(correct_counts, k, seed=cfg.seed),
        "curve": passk.curve(correct_counts, k),
        "by_level": passk.by_level(problems, correct_counts, k),
        "by_subject": passk.by_subject(problems, correct_counts, k),
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
        "examples": examples,
    }


def evaluate_sets(engine, sets: dict[str, list[Problem]], cfg: EvalConfig, template: str = "plain",
                  reward_cfg: RewardConfig | None = None, pool=None, tag: str = "", world: World | None = None
                  ) -> dict[str, dict[str, Any]]:
    """`evaluate` on each named held-out set (e.g. arithmetic and code), one line printed per
    set; returns {name: result}. The trainer's evaluations before, during and after RL."""
    results = {}
    for name, problems in sets.items():
        result = results[name] = evaluate(engine, problems, cfg, template, reward_cfg, progress=False, pool=pool,
                                          world=world)
        label = f" [{name}]" if len(sets) > 1 else ""
        at_k = f" pass@{result['k']} {result['pass@k']:.3f}" if result["k"] > 1 else ""
        print(f"eval {tag}{label}: pass@1 {result['pass@1']:.3f}{at_k} on {result['n']} held-out problems "
              f"(answers graded in the {result['answer_style']!r} style)")
    return results


def report_entries(results: dict[str, dict[str, Any]], when: str) -> dict[str, Any]:
    """report.json keys for the evaluations `when` ("before" or "after") training:
    `eval_<when>` and `pass1_<when>` for the first (or only) set, and with several sets
    `pass1_<when>/<name>` and `eval_<when>/<name>` for each of them; none without a set."""
    if not results:  # data.heldout_size=0
        return {}
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
