"""A run of phases: `data.stages` entries that name a preset, each phase a full RL run.

    pillion train data.stages='[{preset: grpo, steps: 60}, {preset: concise, steps: 40}]' out=runs/two
    pillion train out=runs/two --resume          # continues the phase it stopped in
    pillion train data.stages='[{preset: grpo, steps: 60}, {preset: concise, steps: 40, lr: 2e-5}]'

Fatemi et al. (2504.05185, docs/algorithms.md §11) shorten responses with a second, brief RL
phase on problems the first phase's policy solves sometimes; that second phase uses another
algorithm, reward and data than the first, so it is a second run rather than a stage of one
(an SRPO stage, `{sources: ..., steps: N}`, only reweights the data inside one run). Phase i
is `train()` of the config that `resolve` gives for `algo=<preset>` with the same config file
and key=value arguments as the whole run, then the stage's own keys, then: steps = the stage's
steps, out = RUN/<i>-<preset>, model = the newest checkpoint of phase i - 1 (phase 1: model=),
data.stages = the preset's own. Phases run one after the other in one process.

The run folder holds config.yaml (the run's config, with the stages), phases.yaml (every
phase's resolved config, written before phase 1 starts, so that a bad key in a later stage
fails at once, not after an hour), one sub-folder per phase (a complete run with its own
report), and, at the end, report.json / report.md / metrics.jsonl for the whole run: the first
phase's evaluation before training, the last phase's after, a `phases` list with each phase's
pass@1 and mean held-out response length before and after it (and their changes), and the
phases' metrics on one step axis.

Resume: a finished phase (its report.json written) is skipped; a started one resumes from its
own checkpoints (`train(resume=True)` with its saved config); the next starts from the
previous phase's final checkpoint, so a resumed run follows the uninterrupted one. A run of
phases resumes as planned: `--resume` takes only out=.

A phase starts from the model the previous phase ended with, which that phase has just
evaluated with the same protocol; when the held-out sets and the evaluation settings are the
same, that evaluation is reused as the new phase's "before" rather than recomputed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import yaml

from pillion import config as config_lib
from pillion.data.history import parse_stages
from pillion.errors import UserError
from pillion.files import DiskFullError
from pillion.train import common, state

# Config keys that decide what the held-out evaluation measures: two phases equal on these give
# the same result for the same model, so the next phase reuses the previous phase's "after".
EVAL_KEYS = ("eval", "data.heldout", "data.heldout_size", "data.template", "data.max_prompt_tokens",
             "data.format", "data.on_error", "reward.answer_style", "reward.timeout", "max_new_tokens", "seed",
             "behaviour.phrases", "device", "dtype", "compile", "lora")


def is_phased(cfg: config_lib.TrainConfig) -> bool:
    """Whether data.stages names presets (validated by config.resolve: all stages or none)."""
    return bool(cfg.data.stages) and parse_stages(cfg.data.stages)[0].preset is not None


def plan_phases(cfg: config_lib.TrainConfig, config_file: str | None, overrides: list[str], run_dir: Path
                ) -> list[config_lib.TrainConfig]:
    """Every phase's resolved config (module docstring); a bad key names its stage."""
    configs = []
    model = cfg.model
    for i, stage in enumerate(parse_stages(cfg.data.stages)):
        where = f"data.stages[{i}] ({stage.preset})"
        try:
            phase = config_lib.resolve(config_lib.TrainConfig, config_file, [*overrides, f"algo={stage.preset}"])
            own = config_lib.load_yaml(config_lib.preset_path(stage.preset)).get("data") or {}
            phase.data.stages = own.get("stages") or []
            for key, value in stage.config.items():
                config_lib.set_key(phase, key, value)
            phase.steps, phase.model = stage.steps, model
            phase.out = str(run_dir / f"{i + 1}-{stage.preset}")
            config_lib.validate(phase)
        except UserError as e:
            raise config_lib.ConfigError(f"{where}: {e}") from None
        configs.append(phase)
        model = str(state.checkpoint_dir(Path(phase.out), phase.steps))  # its final checkpoint
    return configs


def run_phases(cfg: config_lib.TrainConfig, config_file: str | None = None, overrides: list[str] | None = None,
               resume: bool = False, overwrite: bool = False) -> dict:
    """Plan (or reload) the phases, run each in turn, write the combined report; return it."""
    from pillion.train.rl import train

    overrides = list(overrides or [])
    presets = [stage.preset for stage in parse_stages(cfg.data.stages)]
    run_dir = common.plan_run_dir(cfg.out, "-".join(presets), resume, overwrite)
    if resume:
        others = [key for key, _ in config_lib.parse_overrides(overrides) if key != "out"]
        others += [config_file] if config_file else []
        if others:
            raise config_lib.ConfigError(f"a run of phases resumes as planned; give only out= with --resume "
                                         f"(got {', '.join(others)})")
        configs = load_plan(run_dir)
    else:
        configs = plan_phases(cfg, config_file, overrides, run_dir)
        common.create_run_dir(run_dir, overwrite)
        state.write_text_atomic(run_dir / "config.yaml", config_lib.dumps(cfg))
        state.write_text_atomic(run_dir / "phases.yaml",
                                yaml.safe_dump([config_lib.to_dict(c) for c in configs], sort_keys=False))
    reports: list[dict] = []
    for i, phase in enumerate(configs):
        folder = Path(phase.out)
        if (folder / "report.json").is_file():  # finished before an interruption
            reports.append(json.loads((folder / "report.json").read_text(encoding="utf-8")))
            continue
        started = (folder / "config.yaml").is_file()
        if started:  # its own saved config (model= as it was when it started)
            phase = config_lib.from_dict(config_lib.TrainConfig, config_lib.load_yaml(folder / "config.yaml"))
        elif i > 0:
            phase.model = str(_final_checkpoint(Path(configs[i - 1].out)))
        before = _reusable_before(configs[i - 1], phase, reports[-1]) if i > 0 and reports else None
        print(f"phase {i + 1}/{len(configs)}: {phase.algo} for {phase.steps} steps from {phase.model} in {folder}")
        try:
            reports.append(train(phase, resume=started, before=before))
        except state.RunInterrupted as e:  # point the resume hint at the whole run
            stopped = state.RunInterrupted(e.step, run_dir)
            stopped.args = (f"phase {i + 1} ({phase.algo}) {e}",)
            raise stopped from None
        except DiskFullError as e:  # resumed as a whole run, too
            e.run_dir = run_dir
            raise
    report = combine(run_dir, configs, reports)
    _write(run_dir, configs, report)
    return report


def load_plan(run_dir: Path) -> list[config_lib.TrainConfig]:
    path = run_dir / "phases.yaml"
    if not path.is_file():
        raise common.RunError(f"{path} is missing: this run of phases cannot resume (start it again with --overwrite)")
    items = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise common.RunError(f"{path}: expected a list of phase configs")
    return [config_lib.from_dict(config_lib.TrainConfig, item) for item in items]


def _final_checkpoint(folder: Path) -> Path:
    last = state.latest(folder)
    if last is None:
        raise common.RunError(f"{folder} finished without a checkpoint: the next phase has no model to start from")
    return last


def _reusable_before(previous: config_lib.TrainConfig, phase: config_lib.TrainConfig, report: dict) -> dict | None:
    """The previous phase's final evaluation as this phase's "before", when it measures the same."""
    if any(_get(previous, key) != _get(phase, key) for key in EVAL_KEYS):
        return None
    return {key.replace("_after", "_before"): value for key, value in report.items()
            if key.startswith(("eval_after", "pass1_after"))}


def _get(cfg, key: str):
    return functools.reduce(getattr, key.split("."), cfg)


def combine(run_dir: Path, configs: list[config_lib.TrainConfig], reports: list[dict]) -> dict:
    """The run's report.json: first phase's "before", last phase's "after", and per phase its
    pass@1 and mean held-out response length (generated tokens) before and after it."""
    phases = []
    for cfg, report in zip(configs, reports):
        entry = {"preset": cfg.algo, "run_dir": cfg.out, "steps": cfg.steps}
        for when in ("before", "after"):
            entry[f"pass1_{when}"] = report[f"pass1_{when}"]
            entry[f"length_{when}"] = report[f"eval_{when}"]["mean_length"]
        entry["pass1_change"] = entry["pass1_after"] - entry["pass1_before"]  # points / 100
        entry["length_change"] = entry["length_after"] / entry["length_before"] - 1.0  # -0.2: 20% shorter
        if "select" in report:
            entry["select"] = {k: v for k, v in report["select"].items() if k != "rates"}
        phases.append(entry)
    first, last = reports[0], reports[-1]
    return {"run_dir": str(run_dir), "algo": "+".join(c.algo for c in configs), "n_heldout": last["n_heldout"],
            "phases": phases,
            **{k: v for k, v in first.items() if k.startswith(("eval_before", "pass1_before"))},
            **{k: v for k, v in last.items() if k.startswith(("eval_after", "pass1_after"))}}


def _write(run_dir: Path, configs: list[config_lib.TrainConfig], report: dict) -> None:
    """report.json, metrics.jsonl (the phases' steps one after another, with "phase"), report.md."""
    from pillion.eval.report import write_report

    lines, offset = [], 0
    for i, cfg in enumerate(configs):
        path = Path(cfg.out) / "metrics.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            record = json.loads(line)
            lines.append(json.dumps({**record, "step": record["step"] + offset, "phase": i + 1}))
        offset += cfg.steps
    state.write_text_atomic(run_dir / "metrics.jsonl", "".join(line + "\n" for line in lines))
    state.write_text_atomic(run_dir / "report.json", json.dumps(report, indent=2))
    path = write_report(run_dir)
    table = ["## Phases", "", "| phase | preset | steps | pass@1 before | after | mean length before | after "
             "| length change |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for i, p in enumerate(report["phases"]):
        table.append(f"| {i + 1} | {p['preset']} | {p['steps']} | {p['pass1_before']:.3f} | {p['pass1_after']:.3f} "
                     f"| {p['length_before']:.1f} | {p['length_after']:.1f} | {100 * p['length_change']:+.1f}% |")
    text = path.read_text(encoding="utf-8").split("\n", 2)
    path.write_text("\n".join([*text[:2], *table, "", *text[2:]]), encoding="utf-8")
    for p in report["phases"]:
        print(f"{p['preset']}: pass@1 {p['pass1_before']:.3f} -> {p['pass1_after']:.3f}, mean held-out length "
              f"{p['length_before']:.1f} -> {p['length_after']:.1f} ({100 * p['length_change']:+.1f}%)")
    print(f"report: {path}")
