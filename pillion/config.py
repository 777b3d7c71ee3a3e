"""The commands' configs: `TrainConfig` (`pillion train`) and `SFTConfig` (`pillion sft`),
composed from the groups their owners declare, with the presets and the checks that span groups.

Resolution order (later wins): dataclass defaults -> preset `configs/<algo>.yaml` -> the
CONFIG file given on the command line -> `key=value` arguments (pillion/resolver.py). Keys are
dotted paths into the tree (`loss.clip_high=0.28`, `reward.overlong.enable=true`); values are
parsed as YAML scalars. An unknown key or a value of the wrong type is an error that names
the key. Knob names follow docs/algorithms.md §0. `adv` and `loss` are both a choice and a
group: `adv=rloo` sets `adv.name`, `loss=nll` sets `loss.name`, and `adv.whiten=true` a field.

Every group is a dataclass beside the code that uses its values, and declares its choices
(`Literal`) and ranges beside its fields (pillion/fields.py):

    adv, loss, ppo, filter, dpo             train/knobs.py
    reward.judge                            rewards/judge.py
    reward, reward.overlong                 rewards/shaping.py
    data                                    data/config.py (the loop's stages, history, select: below)
    data.select                             eval/select.py
    eval                                    eval/samples.py
    behaviour                               eval/behaviour.py
    optim                                   train/optim.py
    log, log.wandb                          train/trackers.py
    lora                                    model/lora.py
    ref, critic, activation_checkpointing   train/models.py
    fsdp                                    train/parallel.py
    tool                                    rollout/tools.py
    tiny (sft)                              model/tiny.py

`validate` walks every leaf of a resolved config, before any model or data loads (its type,
its range, its check: `fields.check_tree`), then checks what spans groups (`_across_groups`).
Each error is one line naming the key and what is allowed.

A resumed run (`pillion train|sft out=DIR --resume key=value`) keeps the configuration it started
with: `check_resume` refuses a change to any key but those of `RESUMABLE` (how long the run
goes, how often it saves, evaluates and logs, and the threads and workers it uses: none changes
what a step computes), unless the user names the key with `--allow-change KEY`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pillion import resolver
from pillion.data.config import DataConfig
from pillion.data.history import parse_stages
from pillion.eval.behaviour import BehaviourConfig
from pillion.eval.samples import EvalConfig
from pillion.eval.select import SelectConfig
from pillion.fields import ConfigError, bounded, check_tree, checked, free, leaves
from pillion.model.lora import LoraConfig
from pillion.model.tiny import TinyModelConfig
from pillion.resolver import dumps, load_yaml, parse_overrides, save, set_key, to_dict
from pillion.rewards.shaping import RewardConfig
from pillion.rollout.tools import ToolConfig
from pillion.train.common import check_device
from pillion.train.knobs import AdvConfig, DpoConfig, FilterConfig, LossConfig, PPOConfig
from pillion.train.models import CheckpointingConfig, CriticConfig, RefConfig
from pillion.train.optim import OptimConfig
from pillion.train.parallel import FsdpConfig
from pillion.train.trackers import LogConfig

__all__ = [
    "PRESET_DIR", "RESUMABLE", "ConfigError", "DataConfig", "SFTConfig", "TrainConfig", "TrainDataConfig",
    "check_resume", "dumps", "from_dict",
    "load_yaml", "parse_overrides", "preset_path", "resolve", "save", "set_key", "to_dict", "validate",
]

PRESET_DIR = Path(__file__).parent / "configs"


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset algo={name!r}; presets: {', '.join(available)}")
    return path


def _preset(name: str, cfg: TrainConfig) -> None:
    preset_path(name)


def _stages(stages: list[dict], data: TrainDataConfig) -> None:
    """data.stages (data/history.py `parse_stages`): all stages with sources, or all with a preset."""
    try:
        parsed = parse_stages(stages, data.sources) if stages else []
    except ValueError as e:  # names the entry: data.stages[i]...
        raise ConfigError(str(e)) from None
    for i, stage in enumerate(parsed):
        if stage.preset is not None:
            try:
                preset_path(stage.preset)
            except ConfigError as e:
                raise ConfigError(f"data.stages[{i}].preset: {e}") from None


@dataclass
class TrainDataConfig(DataConfig):
    """`data.*` of the RL loop: the shared group, plus SRPO's history resampling and stages and
    the pass-rate selection of the concise preset (docs/algorithms.md §10, §11)."""

    history_resampling: bool = free(False)  # SRPO
    # [{sources: {name: weight}, steps: N}, ...] (one run) or [{preset: NAME, steps: N}, ...] (phases)
    stages: list[dict] = checked([], _stages)
    select: SelectConfig = field(default_factory=SelectConfig)  # concise phase: sometimes-solved problems


@dataclass
class TrainConfig:
    algo: str = checked("grpo", _preset)  # a preset, pillion/configs/<algo>.yaml
    model: str = free("default")  # a Hugging Face folder; "default": the shipped tiny arithmetic model
    out: str | None = free(None)  # run directory; default runs/<time>-<algo>
    seed: int = free(0)
    device: str = checked("auto", check_device)  # auto | cpu | cuda | cuda:N
    # CPU intra-op threads: auto counts the cores other work leaves free when the run starts
    # (pillion/threads.py); a number sets it
    threads: int | Literal["auto"] = bounded("auto", low=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: int = bounded(60, low=1)  # the CPU default: ~1.5 min of GRPO on 2 cores
    prompts_per_step: int = bounded(32, low=1, ranks="split")
    group_size: int = bounded(8, low=1)
    max_new_tokens: int = bounded(48, low=1)
    temperature: float = bounded(1.0, low=0, open="low")  # log-probs divide by it: 0 would make every update NaN
    top_p: float = bounded(1.0, low=0, high=1, open="low")
    top_k: int = bounded(0, low=0, note="0: off")
    lr: float = bounded(1e-4, low=0, open="low")
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = bounded(0, low=0)
    weight_decay: float = bounded(0.0, low=0)
    grad_clip: float = bounded(1.0, low=0, open="low")
    micro_batch: int = bounded(128, low=1)  # rows per forward/backward
    # > 0: micro-batches of at most this many tokens (prompt + response, packed without padding),
    # balanced; a row longer than it runs alone. 0: `micro_batch` rows each
    micro_batch_tokens: int = bounded(0, low=0)
    mini_batches: int = bounded(1, low=1)  # optimizer steps per rollout batch and epoch
    ppo_epochs: int = bounded(1, low=1)
    save_every: int = bounded(20, low=1)
    eval_every: int = bounded(0, low=0, note="0: before and after training only")
    max_bad_steps: int = bounded(3, low=1)  # non-finite updates in a row before the run stops
    grading_workers: int = bounded(1, low=1)
    compile: bool = False  # torch.compile the rollout decode step and the training forward (long runs)
    # Packed forwards run a prompt shared by a group's rows once (model/sequences.py); false: each
    # row's prompt runs in full (the same values up to float summation order)
    share_prompts: bool = True
    adv: AdvConfig = field(default_factory=AdvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)  # online DPO (adv=dpo)
    # Grade the final \boxed{} answer, the format every prompt template asks for.
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(answer_style="boxed"))
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=48))
    optim: OptimConfig = field(default_factory=OptimConfig)  # optim=adamw | muon | dion
    log: LogConfig = field(default_factory=LogConfig)  # trackers: tensorboard, wandb
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)  # reflection phrases, KL probe
    # Memory on one device (pillion/train/models.py): LoRA, reference offload, critic placement,
    # activation checkpointing. dtype=bfloat16 computes in bf16 over float32 master weights.
    lora: LoraConfig = field(default_factory=LoraConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    activation_checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    tool: ToolConfig = field(default_factory=ToolConfig)


@dataclass
class SFTConfig:
    """`pillion sft` (pillion/train/sft.py): every key here is used by the SFT loop."""

    model: str = free("default")  # a Hugging Face folder to fine-tune (ignored with init=tiny)
    init: Literal["none", "tiny"] = "none"  # tiny: start from a fresh random model of size `tiny`
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    out: str | None = free(None)
    seed: int = free(0)
    device: str = checked("auto", check_device)
    threads: int | Literal["auto"] = bounded("auto", low=1)  # CPU intra-op threads, as TrainConfig.threads
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: int = bounded(500, low=1)
    batch_size: int = bounded(64, low=1, ranks="split")
    lr: float = bounded(1e-3, low=0, open="low")
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = bounded(20, low=0)
    weight_decay: float = bounded(0.0, low=0)
    grad_clip: float = bounded(1.0, low=0, open="low")
    save_every: int = bounded(100, low=1)  # a checkpoint every N steps and after the last (`pillion sft --resume`)
    max_bad_steps: int = bounded(3, low=1)  # non-finite updates in a row before the run stops, as in train
    data: DataConfig = field(default_factory=DataConfig)  # no stages, history or selection: RL's
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=48))
    optim: OptimConfig = field(default_factory=OptimConfig)  # optim=adamw | muon | dion
    log: LogConfig = field(default_factory=LogConfig)  # trackers: tensorboard, wandb
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)


def _sft_start(cfg: SFTConfig) -> None:
    """`init` says where SFT starts, `model=` (init=none) or a fresh model of the `tiny` sizes:
    the keys of the other start would do nothing, so they are refused."""
    if cfg.init == "tiny" and cfg.model != "default":
        raise ConfigError(f"config key 'model': init=tiny starts from a fresh tiny model, so model={cfg.model!r} "
                          "would be ignored; drop model= or init=tiny")
    if cfg.init == "none":
        changed = [leaf.key for leaf in leaves(cfg.tiny, "tiny.") if leaf.value != leaf.default]
        if changed:
            raise ConfigError(f"config key '{changed[0]}': the tiny.* sizes build the fresh model of init=tiny, and "
                              f"this run starts from model={cfg.model!r}; drop {', '.join(changed)} or set init=tiny")


def _across_groups(cfg: TrainConfig | SFTConfig) -> None:
    """The rules that join keys of several groups (each group's own rules are its fields' checks)."""
    if cfg.optim.name != "adamw" and cfg.dtype != "float32":
        raise ConfigError(f"config key 'optim': {cfg.optim.name} steps the model's own float32 weights; with "
                          f"dtype={cfg.dtype} the optimizer steps separate float32 masters: use optim=adamw or "
                          "dtype=float32")
    if isinstance(cfg, SFTConfig):
        _sft_start(cfg)
        return
    if cfg.optim.name != "adamw" and cfg.lora.rank > 0:
        raise ConfigError(f"config key 'optim': {cfg.optim.name} needs the model's hidden matrices, and "
                          "lora.rank > 0 trains adapters only: use optim=adamw with LoRA")
    if cfg.data.heldout_size == 0 and cfg.eval_every:
        raise ConfigError(f"config key 'eval_every': eval_every={cfg.eval_every} evaluates the held-out problems, "
                          "and data.heldout_size=0 holds none; set eval_every=0 or data.heldout_size > 0")
    if cfg.data.heldout_size == 0 and any(isinstance(s, dict) and "preset" in s for s in cfg.data.stages):
        raise ConfigError("config key 'data.heldout_size': phases (data.stages with presets) report held-out pass@1 "
                          "before and after each phase, and data.heldout_size=0 holds no problem; set it > 0")
    if cfg.filter.dynamic_sampling and cfg.group_size < 2:
        raise ConfigError("config key 'group_size': dynamic sampling (filter.dynamic_sampling) needs "
                          f"group_size >= 2, got {cfg.group_size}")
    if cfg.data.select.size and (cfg.data.weights or any("sources" in stage for stage in cfg.data.stages)):
        raise ConfigError("config key 'data.select.size': the selected problems form one pool, so data.weights "
                          "and data.stages with sources cannot apply; drop them or set data.select.size=0")
    if cfg.adv.name == "dpo":
        _dpo_rules(cfg)
    if cfg.algo == "pairwise" and cfg.reward.judge.model is None:
        raise ConfigError("config key 'reward.judge.model': algo=pairwise optimises a judge's pairwise preferences; "
                          "give the judge's model folder (reward.judge.model=DIR)")
    if cfg.group_size == 1 and cfg.adv.name in ("grpo", "dr_grpo", "rloo"):
        warnings.warn(f"group_size=1 with adv={cfg.adv.name}: every advantage is 0, nothing will be learned",
                      stacklevel=3)


def _dpo_rules(cfg: TrainConfig) -> None:
    """Online DPO pairs each group's best and worst responses and reaches the DPO gradient through
    per-row advantages computed before the update (algorithms/preference.py): one update per
    rollout, an unclipped sequence-sum loss, and a reference the policy can be copied into."""
    if cfg.group_size < 2:
        raise ConfigError(f"config key 'group_size': adv=dpo pairs the best and worst of each prompt's samples and "
                          f"needs group_size >= 2, got {cfg.group_size}")
    if cfg.ppo_epochs != 1 or cfg.mini_batches != 1:
        raise ConfigError("config key 'ppo_epochs': adv=dpo computes its advantages at the rollout's weights, so it "
                          f"takes one update per rollout (ppo_epochs=1 mini_batches=1), got ppo_epochs="
                          f"{cfg.ppo_epochs} mini_batches={cfg.mini_batches}")
    if cfg.loss.name != "reinforce" or cfg.loss.agg != "seq_mean_token_sum":
        raise ConfigError(f"config key 'loss': adv=dpo needs loss.name=reinforce loss.agg=seq_mean_token_sum (its "
                          f"advantages give the DPO gradient through that loss), got loss.name={cfg.loss.name} "
                          f"loss.agg={cfg.loss.agg}")
    if cfg.dpo.ref_update_every and cfg.lora.rank > 0:
        raise ConfigError("config key 'dpo.ref_update_every': with LoRA the reference is the policy with its adapters "
                          "off and cannot be refreshed; set dpo.ref_update_every=0 or lora.rank=0")


def validate(cfg: TrainConfig | SFTConfig) -> None:
    """Every leaf's type, range and check (fields.check_tree), then the rules across groups."""
    check_tree(cfg)
    _across_groups(cfg)


def resolve(cls, config_file: str | None = None, overrides: list[str] | None = None, preset_key: str | None = "algo",
            base: dict | None = None):
    """A config of `cls` from defaults, preset, file and key=value overrides (pillion/resolver.py).
    `base` (a saved run's config.yaml, when resuming) replaces defaults and preset."""
    return resolver.resolve(cls, config_file, overrides, preset=preset_path, preset_key=preset_key, base=base,
                            validate=validate)


def from_dict(cls, data: dict):
    """Rebuild a saved config (e.g. a run directory's config.yaml) with the same checks."""
    return resolver.from_dict(cls, data, validate=validate)


# The keys a resumed run may change: the rest would mix two configurations in one run. A group
# (log) stands for every key under it.
RESUMABLE = ("steps", "eval_every", "save_every", "max_bad_steps", "threads", "grading_workers", "log",
             "fsdp.timeout_s", "out")


def _under(key: str, names) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def check_resume(saved, cfg, allow: list[str] | tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming them, the keys `cfg` changes from the `saved` config of the run
    it resumes, but those in RESUMABLE and those `allow` names (keys or groups)."""
    known = [leaf.key for leaf in leaves(saved)]
    for name in allow:
        if not any(_under(key, [name]) for key in known):
            raise ConfigError(f"--allow-change {name}: not a config key")
    before = {leaf.key: leaf.value for leaf in leaves(saved)}
    changed = [leaf.key for leaf in leaves(cfg) if leaf.value != before[leaf.key]]
    refused = [key for key in changed if not _under(key, (*RESUMABLE, *allow))]
    if refused:
        resumable = [name for name in RESUMABLE if any(_under(key, [name]) for key in known)]  # this command's
        shown = "; ".join(f"{key}: {before[key]!r} -> {_value(cfg, key)!r}" for key in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ConfigError(f"--resume keeps the run's configuration, and {', '.join(refused)} would change ({shown}"
                          f"{more}); keys that may change on resume: {', '.join(resumable)}. Start a new run "
                          f"(another out=), or change them anyway with "
                          f"{' '.join(f'--allow-change {key}' for key in refused)}")


def _value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg
