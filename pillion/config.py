"""Typed configuration: one dataclass tree per command, YAML presets, key=value overrides.

Resolution order (later wins): dataclass defaults -> preset `configs/<algo>.yaml` -> the
CONFIG file given on the command line -> `key=value` arguments. Keys are dotted paths into the
tree (`loss.clip_high=0.28`, `reward.overlong.enable=true`); values are parsed as YAML
scalars. An unknown key or a value of the wrong type is an error that names the key.

Knob names follow shared/ALGORITHMS.md §0. `adv` and `loss` are both a choice and a group:
`adv=rloo` sets `adv.name`, `loss=nll` sets `loss.name`, and `adv.whiten=true` a field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pillion.eval.evaluate import EvalConfig
from pillion.rewards.shaping import RewardConfig

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class AdvConfig:
    name: str = "grpo"  # grpo | dr_grpo | rloo | reinforce_pp | gae | raw | raft
    std_normalize: bool = True
    eps: float = 1e-6
    whiten: bool = False  # whiten advantages over the batch's valid tokens (verl GAE default)


@dataclass
class LossConfig:
    name: str = "ppo_clip"  # ppo_clip | nll (RAFT) | reinforce
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm.
    # Length bias (ALGORITHMS §1.1): seq_mean_token_mean weighs a token by 1/L_i (short right
    # answers pushed harder, long wrong ones penalised less per token); token_mean weighs tokens
    # equally within a batch; seq_mean_token_sum_norm divides by a run constant (unbiased).
    agg: str = "seq_mean_token_mean"
    norm_len: int | None = None  # Dr. GRPO's constant; None: max_new_tokens
    kl_coef: float = 0.0
    kl_kind: str = "k3"  # k1 | k2 | k3 | low_var
    kl_in: str = "loss"  # loss | reward
    entropy_coef: float = 0.0
    nll_coef: float = 0.0  # VAPO positive-example LM loss
    ratio_level: str = "token"  # token | sequence (GSPO)
    tis_cap: float | None = None  # truncated importance sampling against engine log-probs


@dataclass
class PPOConfig:
    gamma: float = 1.0
    lam: float = 0.95
    lam_critic: float | None = None  # VAPO decoupled GAE: critic targets; None: lam
    vapo_alpha: float | None = None  # VAPO length-adaptive policy lambda; None: lam
    value_clip: float | None = 0.2
    vf_coef: float = 1.0
    critic_lr: float = 1e-4
    value_pretrain_steps: int = 0


@dataclass
class FilterConfig:
    reject: str = "none"  # none | all_equal (Reinforce-Rej)
    dynamic_sampling: bool = False  # DAPO: keep mixed groups, refill the batch
    max_gen_batches: int = 10
    overlong_mask: bool = False  # zero the loss of truncated responses


@dataclass
class DataConfig:
    # Training pools, name -> spec. A spec is a dataset file (.jsonl/.json/.parquet) or
    # "synthetic:LEVELS" (the arithmetic curriculum, e.g. "synthetic:1,2,3") or
    # "synthetic_code:LEVELS" (the code curriculum, pillion/data/synthetic_code.py).
    sources: dict[str, str] = field(default_factory=lambda: {"arith": "synthetic:1,2"})
    weights: dict[str, float] | None = None  # sampling weight per source; None: equal
    format: str = "auto"
    on_error: str = "raise"  # raise | skip
    synthetic_size: int = 20000  # problems per synthetic source
    # Evaluation set (synthetic held-out never overlaps train), or several as a mapping name -> spec,
    # each evaluated and reported on its own (report.json: pass1_before/<name>, ...).
    heldout: str | dict[str, str] = "synthetic:1,2"
    heldout_size: int = 200
    template: str = "qa"  # a name in pillion.data.templates.TEMPLATES or a format with {question}
    history_resampling: bool = False  # SRPO
    stages: list[dict] = field(default_factory=list)  # [{sources: {name: weight}, steps: N}, ...]


@dataclass
class TrainConfig:
    algo: str = "grpo"
    model: str = "default"  # a Hugging Face folder; "default": the shipped tiny arithmetic model
    out: str | None = None  # run directory; default runs/<time>-<algo>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16
    steps: int = 60  # the CPU default: ~1.5 min of GRPO on 2 cores
    prompts_per_step: int = 32
    group_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 128  # rows per forward/backward
    mini_batches: int = 1  # optimizer steps per rollout batch and epoch
    ppo_epochs: int = 1
    save_every: int = 20
    eval_every: int = 0  # 0: evaluate before and after training only
    max_bad_steps: int = 3  # non-finite updates in a row before the run stops
    grading_workers: int = 1
    compile: bool = False  # torch.compile the rollout decode step (pays off over long runs)
    adv: AdvConfig = field(default_factory=AdvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # Grade the final \boxed{} answer, the format every prompt template asks for.
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(answer_style="boxed"))
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=48))


@dataclass
class TinyModelConfig:
    """Sizes of a fresh random model (`sft init=tiny`), built by pillion/model/tiny.py."""

    family: str = "qwen2"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    tie_word_embeddings: bool = True


@dataclass
class SFTConfig:
    model: str = "default"  # a Hugging Face folder to fine-tune (ignored with init=tiny)
    init: str = "none"  # none | tiny: start from a fresh random model of size `tiny`
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=48))


class ConfigError(ValueError):
    pass


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': {value!r} is not {annotation}")
    target = origin or annotation
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if target is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if target is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if target in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {target.__name__}, got {value!r}")
    if not isinstance(value, target):
        raise ConfigError(f"config key '{key}': expected {getattr(target, '__name__', target)}, got {value!r}")
    return value


def set_key(cfg, key: str, value: Any) -> None:
    """Set a dotted key on a dataclass tree, type-checked; a group given a scalar sets `.name`."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        fields = _fields(node)
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=3)
            hint = f" (did you mean {', '.join('.'.join(parts[:i] + [c]) for c in close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        current = getattr(node, part)
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(current):
            if last:
                if isinstance(value, dict):
                    for k, v in value.items():
                        set_key(current, k, v)
                elif "name" in _fields(current):
                    set_key(current, "name", value)
                else:
                    raise ConfigError(f"config key '{key}' is a group; set its fields ({', '.join(_fields(current))})")
                return
            node = current
            continue
        if not last:
            raise ConfigError(f"unknown config key '{key}' ('{'.'.join(parts[:i + 1])}' is not a group)")
        setattr(node, part, _check_type(key, value, typing.get_type_hints(type(node))[part]))


def _flatten(node, d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """YAML mapping -> dotted (key, value) pairs, descending only into dataclass groups (so a
    dict-valued field such as data.sources is replaced whole, never merged)."""
    out = []
    fields = _fields(node)
    for k, v in d.items():
        key = f"{prefix}{k}"
        child = getattr(node, k) if k in fields else None
        if isinstance(v, dict) and dataclasses.is_dataclass(child):
            out += _flatten(child, v, key + ".")
        else:
            out.append((key, v))
    return out


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return data


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset algo={name!r}; presets: {', '.join(available)}")
    return path


def resolve(cls, config_file: str | None = None, overrides: list[str] | None = None, preset_key: str | None = "algo"):
    """Build a config of dataclass `cls` from defaults, preset, file and key=value overrides."""
    cfg = cls()
    file_pairs = _flatten(cfg, load_yaml(config_file)) if config_file else []
    cli_pairs = parse_overrides(overrides or [])
    layers = []
    if preset_key:
        algo = dict(file_pairs + cli_pairs).get(preset_key, getattr(cfg, preset_key))
        layers.append(_flatten(cfg, load_yaml(preset_path(algo))))
    for pairs in layers + [file_pairs, cli_pairs]:
        for key, value in pairs:
            set_key(cfg, key, value)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def from_dict(cls, data: dict):
    """Rebuild a saved config (e.g. a run directory's config.yaml) with the same checks."""
    cfg = cls()
    for key, value in _flatten(cfg, data):
        set_key(cfg, key, value)
    return cfg
