"""A run directory's report: plots of the logged metrics and a markdown summary; and the markdown
table of one evaluation result (`markdown_table`, also `pillion eval`'s eval.md).

    from pillion.eval.report import write_report
    write_report("runs/grpo")               # -> runs/grpo/report.md, runs/grpo/plots/*.png
    python -m pillion.eval.report runs/grpo  # the same from a shell

Reads, from the run directory:
- metrics.jsonl: one JSON object per line with "step" and metrics (reward, accuracy,
  response_length, kl, entropy, clipfrac, grad_norm, logprob_error, tokens_per_s, step_time,
  time_generate, time_grade, time_logprobs, time_update, time_other (a table of where the step
  time goes),
  eval/pass@1, ...). Lines that are not JSON objects are skipped and counted; values that are
  not finite numbers (strings, null, NaN, booleans) are ignored; a line without "step" takes the
  step of the line before it plus one.
- config.yaml (optional): embedded verbatim.
- report.json (optional): pass1_before, pass1_after, n_heldout and eval_before / eval_after
  (results of `pillion.eval.evaluate`), shown as a before/after table and the eval table.

A metric that stays constant (to float noise, 1e-6 relative) over more than one logged step
gets no panel (its axis would read `1e-8+1`): report.md lists it with its value instead.
With periodic evaluations (eval_every > 0) plots/heldout.png draws held-out pass@1 against the
step, from the evaluation before training to the one after, one line per held-out set.
report.md also gives the run's wall time (report.json `wall_seconds`), the answer style and
template the held-out figures are graded with, every held-out set's results (report.json
`eval_before/<name>`, ...), and a few right and wrong completions before and after training.

Writes one PNG per metric group that has data (plots/reward.png, plots/length.png,
plots/behaviour.png, plots/kl_entropy.png, plots/loss.png, plots/optim.png, plots/throughput.png,
plots/mismatch.png, plots/step_time.png, plots/other.png for metrics no group names), one panel per metric, the raw
series thin and a moving average over ~5% of the steps on top; and report.md with everything
embedded. Behaviour (pillion.eval.behaviour) is plotted as logged: reflection_rate and
reflection_count in behaviour.png, the length of correct and incorrect responses next to
response_length, and kl_initial (KL to the initial policy) next to kl. The held-out table adds
the pass@1 95% interval and the evaluations' behaviour when report.json has them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from pillion.files import write_text_atomic, writing

# group -> metrics in display order; a metric matches by exact name, "eval/" prefix or substring
# rules in `group_of`. Anything unmatched lands in "other", so no logged metric goes unplotted.
GROUPS: dict[str, list[str]] = {
    "reward": ["reward", "accuracy", "score"],
    "length": ["response_length", "response_length_correct", "response_length_incorrect"],
    "behaviour": ["reflection_rate", "reflection_count"],
    "kl_entropy": ["kl", "kl_initial", "kl_initial_k1", "entropy"],
    "loss": ["loss", "policy_loss", "pg_loss", "value_loss", "entropy_loss", "kl_loss"],
    "optim": ["grad_norm", "clipfrac", "lr"],
    "mismatch": ["logprob_error"],
    "throughput": ["tokens_per_s", "step_time"],
    "step_time": ["time_generate", "time_grade", "time_logprobs", "time_update", "time_other"],
}
# the step-time breakdown the RL loop logs (train/update.py `step_times`): label per key
PHASES = {"time_generate": "generate (grading beside it)", "time_grade": "grade (after generation)",
          "time_logprobs": "old / reference log-probs, values", "time_update": "update", "time_other": "other"}
SUMMARY_WINDOW = 10  # steps averaged in the "last 10" column of the final-metrics table


def group_of(name: str) -> str:
    """The plot a metric belongs to."""
    for group, names in GROUPS.items():
        if name in names:
            return group
    if name.startswith("eval/") or "pass@" in name or "accuracy" in name or "reward" in name:
        return "reward"
    if "length" in name:
        return "length"
    if "loss" in name:
        return "loss"
    if name.startswith("kl") or "entropy" in name:
        return "kl_entropy"
    return "other"


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (bools are flags, not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_metrics(path: Path) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """metric -> [(step, value)] in file order, and the number of skipped lines."""
    series: dict[str, list[tuple[int, float]]] = {}
    skipped = 0
    step = -1
    if not path.exists():
        return series, skipped
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(row, dict):
            skipped += 1
            continue
        logged_step = _number(row.get("step"))
        step = int(logged_step) if logged_step is not None else step + 1
        for name, value in row.items():
            number = _number(value)
            if name != "step" and number is not None:
                series.setdefault(name, []).append((step, number))
    return series, skipped


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


FLAT = 1e-6  # a series whose spread is below this fraction of its size is constant (float noise)


def is_flat(points: list[tuple[int, float]]) -> bool:
    """Constant over more than one logged step, to float noise: nothing for a panel to show."""
    values = [v for _, v in points]
    return len(values) > 1 and max(values) - min(values) <= FLAT * max(abs(max(values)), abs(min(values)), 1e-12)


def plot_groups(series: dict[str, list[tuple[int, float]]], plots_dir: Path) -> dict[str, Path]:
    """One PNG per group with a metric that changes; returns group -> path. Constant metrics
    (`is_flat`) get no panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    by_group: dict[str, list[str]] = {}
    for name in series:
        if not is_flat(series[name]):
            by_group.setdefault(group_of(name), []).append(name)
    order = [*GROUPS, "other"]
    written = {}
    plots_dir.mkdir(parents=True, exist_ok=True)
    for group in sorted(by_group, key=order.index):
        names = by_group[group]
        cols = min(len(names), 3)
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            steps = [s for s, _ in series[name]]
            values = [v for _, v in series[name]]
            window = max(1, len(values) // 20)
            if window > 1:
                ax.plot(steps, values, linewidth=0.8, alpha=0.35, color="C0")
                ax.plot(steps, _moving_average(values, window), linewidth=1.6, color="C0",
                        label=f"mean of {window}")
                ax.legend(fontsize=7)
            else:
                ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, color="C0")
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        written[group] = _save(fig, plots_dir / f"{group}.png")
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with writing(path):  # a full disk: one line naming the plot
            fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def heldout_curves(series: dict[str, list[tuple[int, float]]], summary: dict[str, Any]
                   ) -> dict[str, list[tuple[int, float]]]:
    """Held-out pass@1 by step for each set: before training (step 0), every periodic evaluation
    (metrics.jsonl eval/pass@1, or eval/<set>/pass@1 with several sets), after training (the last
    step). Empty without periodic evaluations."""
    sets = [key.split("/", 1)[1] for key in summary if key.startswith("pass1_before/")]
    last = max((s for points in series.values() for s, _ in points), default=0)
    curves = {}
    for name in sets or [None]:
        suffix, metric = (f"/{name}", f"eval/{name}/pass@1") if name else ("", "eval/pass@1")
        if metric not in series:
            continue
        before, after = _number(summary.get(f"pass1_before{suffix}")), _number(summary.get(f"pass1_after{suffix}"))
        points = [(0, before)] if before is not None else []
        points += [(s, v) for s, v in series[metric] if after is None or s < last]  # the last step: "after"
        points += [(last, after)] if after is not None else []
        curves[name or "held-out"] = points
    return curves


def plot_heldout(curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """plots/heldout.png: pass@1 against the step, one line per held-out set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=4, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _final_table(series: dict[str, list[tuple[int, float]]]) -> list[str]:
    lines = [f"| metric | first | final | mean of last {SUMMARY_WINDOW} | min | max |",
             "|---|---:|---:|---:|---:|---:|"]
    order = [*GROUPS, "other"]
    for name in sorted(series, key=lambda n: (order.index(group_of(n)), n)):
        values = [v for _, v in series[name]]
        tail = values[-SUMMARY_WINDOW:]
        lines.append(f"| {name} | {_fmt(values[0])} | {_fmt(values[-1])} | {_fmt(sum(tail) / len(tail))} "
                     f"| {_fmt(min(values))} | {_fmt(max(values))} |")
    return lines


# (label, key in the eval result's "behaviour" dict as "behaviour/<key>", fallback)
BEHAVIOUR_ROWS = (("reflection rate", "behaviour/reflection_rate", None),
                  ("reflection phrases per sample", "behaviour/reflection_count", None),
                  ("mean length, correct", "behaviour/response_length_correct", None),
                  ("mean length, incorrect", "behaviour/response_length_incorrect", None))


def _lookup(result: dict[str, Any], key: str, default: Any) -> Any:
    """result[key], or result["behaviour"][name] for key "behaviour/name"."""
    if key.startswith("behaviour/"):
        return (result.get("behaviour") or {}).get(key.split("/", 1)[1], default)
    return result.get(key, default)


def _ci_cell(result: dict[str, Any]) -> str | None:
    ci = result.get("pass@1_ci95")
    if not isinstance(ci, list) or len(ci) != 2 or any(_number(x) is None for x in ci):
        return None
    return f"[{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]"


def _before_after(summary: dict[str, Any]) -> list[str]:
    """pass@1 before and after training, from the scalar keys or the eval dicts."""
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    rows = []
    ci_cells = [_ci_cell(result) for result in (before, after)]
    for label, key, fallback in (("pass@1", "pass@1", "pass1"), ("pass@k", "pass@k", None),
                                 ("mean length", "mean_length", None), *BEHAVIOUR_ROWS):
        b = _lookup(before, key, summary.get(f"{fallback}_before") if fallback else None)
        a = _lookup(after, key, summary.get(f"{fallback}_after") if fallback else None)
        if _number(b) is None and _number(a) is None:
            continue
        change = f"{a - b:+.4g}" if _number(a) is not None and _number(b) is not None else "-"
        if label == "pass@k":
            label = f"pass@{after.get('k', before.get('k', 'k'))}"
        rows.append(f"| {label} | {_fmt(b) if b is not None else '-'} | {_fmt(a) if a is not None else '-'} "
                    f"| {change} |")
        if label == "pass@1" and any(ci_cells):
            rows.append(f"| pass@1 95% CI | {ci_cells[0] or '-'} | {ci_cells[1] or '-'} | - |")
    if not rows:
        return []
    lines = ["| held-out | before | after | change |", "|---|---:|---:|---:|", *rows]
    if summary.get("n_heldout") is not None:
        lines += ["", f"{summary['n_heldout']} held-out problems."]
    return lines


def _step_time_table(series: dict[str, list[tuple[int, float]]]) -> list[str]:
    """Mean wall seconds per step of each phase and its share of the step, over all steps."""
    means = {k: sum(v for _, v in series[k]) / len(series[k]) for k in PHASES if series.get(k)}
    total = sum(means.values())
    if not means or total <= 0:
        return []
    lines = ["| phase | mean s per step | share |", "|---|---:|---:|"]
    lines += [f"| {PHASES[k]} | {means[k]:.3g} | {100 * means[k] / total:.0f}% |" for k in means]
    return [*lines, f"| step | {total:.3g} | 100% |"]


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


def duration(seconds: float) -> str:
    """92.4 -> "1 min 32 s"; 3725 -> "1 h 02 min"; 41.2 -> "41.2 s"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _sets(summary: dict[str, Any]) -> list[str]:
    """The named held-out sets of a run with several (report.json eval_after/<name>), else []."""
    return [key.split("/", 1)[1] for key in summary if key.startswith("eval_after/") or
            (key.startswith("eval_before/") and f"eval_after/{key.split('/', 1)[1]}" not in summary)]


def _set_table(summary: dict[str, Any], names: list[str]) -> list[str]:
    """One row per held-out set: its size, pass@1 before and after training."""
    lines = ["| held-out set | n | pass@1 before | after | change |", "|---|---:|---:|---:|---:|"]
    for name in names:
        b, a = _number(summary.get(f"pass1_before/{name}")), _number(summary.get(f"pass1_after/{name}"))
        n = (summary.get(f"eval_after/{name}") or summary.get(f"eval_before/{name}") or {}).get("n", "-")
        change = f"{a - b:+.4g}" if a is not None and b is not None else "-"
        lines.append(f"| {name} | {n} | {_fmt(b) if b is not None else '-'} | {_fmt(a) if a is not None else '-'} "
                     f"| {change} |")
    return lines


def _short(text: Any, width: int = 400) -> str:
    text = str(text if text is not None else "")
    return text if len(text) <= width else text[: width - 3] + "..."


def _examples(result: dict[str, Any]) -> list[str]:
    """A few right and wrong completions of one evaluation (its `examples`, else its `samples`)."""
    lines = []
    for ex in (result.get("examples") or result.get("samples") or [])[:4]:
        verdict = {True: "right", False: "wrong"}.get(ex.get("correct"), "ungradable")
        answer = "none found" if ex.get("extracted") is None else repr(_short(ex["extracted"], 80))
        lines += [f"- **{verdict}** ({ex.get('id', '?')}): {_short(ex.get('question'), 200)!r}; gold "
                  f"{_short(ex.get('gold'), 80)!r}, graded answer {answer}",
                  "", "  ```", *("  " + line for line in _short(ex.get("completion")).splitlines()), "  ```", ""]
    return lines


def _heldout_section(summary: dict[str, Any], series: dict[str, list[tuple[int, float]]], plots_dir: Path
                     ) -> list[str]:
    """Grading, the before/after tables of every held-out set, the pass@1 curve, the evaluation
    tables and a few completions."""
    lines = []
    table = _before_after(summary)
    graded = summary.get("eval_after") or summary.get("eval_before") or {}
    if graded.get("answer_style"):
        lines += [f"Answers graded in the {graded['answer_style']!r} style; prompts rendered with template "
                  f"{graded.get('template', '?')!r}.", ""]
    names = _sets(summary)
    if table:
        lines += [*(["First held-out set:", ""] if names else []), *table, ""]
    if names:
        lines += [*_set_table(summary, names), ""]
    curves = heldout_curves(series, summary)
    if curves:
        path = plot_heldout(curves, plots_dir / "heldout.png")
        lines += [f"![held-out pass@1](plots/{path.name})", ""]
    evaluations = [(f"eval_{when}/{name}", f"{title}: {name}") for name in names
                   for when, title in (("before", "before training"), ("after", "after training"))] or \
        [("eval_before", "before training"), ("eval_after", "after training")]
    for key, title in evaluations:
        result = summary.get(key)
        if isinstance(result, dict) and "k" in result and "pass@1" in result:
            lines += [f"### Evaluation {title}", "", markdown_table(result)]
    for key, title in evaluations:
        result = summary.get(key)
        if isinstance(result, dict) and (examples := _examples(result)):
            lines += [f"### Completions {title}", "", *examples]
    return ["## Held-out evaluation", "", *lines] if lines else []


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png; return the report's path."""
    run_dir = Path(run_dir)
    series, skipped = read_metrics(run_dir / "metrics.jsonl")
    plots = plot_groups(series, run_dir / "plots") if series else {}
    summary_path = run_dir / "report.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    lines = [f"# Run report: {run_dir.name}", ""]
    steps = sorted({s for points in series.values() for s, _ in points})
    if steps:
        lines.append(f"{len(steps)} logged steps, {steps[0]} to {steps[-1]}.")
    else:
        lines.append("No metrics logged (metrics.jsonl missing or empty).")
    if _number(summary.get("wall_seconds")) is not None:
        lines.append(f"Wall time: {duration(summary['wall_seconds'])} (evaluations included).")
    if skipped:
        lines.append(f"{skipped} line(s) of metrics.jsonl were not JSON objects and were skipped.")
    for name in ("reward", "accuracy"):
        if name in series:
            lines.append(f"Final {name}: {_fmt(series[name][-1][1])} (first {_fmt(series[name][0][1])}).")
    lines.append("")

    lines += _heldout_section(summary, series, run_dir / "plots")
    if series:
        lines += ["## Final metrics", "", *_final_table(series), ""]
        flat = sorted(name for name, points in series.items() if is_flat(points))
        if flat:
            lines += ["Constant over the run (no plot): " + ", ".join(f"{name} {_fmt(series[name][-1][1])}"
                                                                      for name in flat) + ".", ""]
    breakdown = _step_time_table(series)
    if breakdown:
        lines += ["## Where the step time goes", "", *breakdown, ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{group}](plots/{path.name})\n" for group, path in plots.items()]
    config = run_dir / "config.yaml"
    if config.exists():
        lines += ["## Config", "", "```yaml", config.read_text().rstrip(), "```", ""]

    report = run_dir / "report.md"
    write_text_atomic(report, "\n".join(lines).rstrip() + "\n")
    return report


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pillion.eval.report RUN_DIR")
    print(write_report(sys.argv[1]))
