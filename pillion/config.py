"""Typed configuration: one dataclass tree per command, YAML presets, key=value overrides.

Resolution order (later wins): dataclass defaults -> preset `configs/<algo>.yaml` -> the
CONFIG file given on the command line -> `key=value` arguments. Keys are dotted paths into the
tree (`loss.clip_high=0.28`, `reward.overlong.enable=true`); values are parsed as YAML
scalars. An unknown key or a value of the wrong type is an error that names the key.

Knob names follow docs/algorithms.md §0. `adv` and `loss` are both a choice and a group:
`adv=rloo` sets `adv.name`, `loss=nll` sets `loss.name`, and `adv.whiten=true` a field.

Every value is checked when the config resolves, before any model or data loads: a field that
names a choice is a `Literal` (the message lists the choices), and `validate` checks ranges
(`steps >= 1`, `0 < top_p <= 1`, ...) and values that other modules define (answer styles,
dataset formats, templates), each error naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pillion.errors import UserError
from pillion.eval.behaviour import BehaviourConfig
from pillion.eval.samples import EvalConfig
from pillion.eval.select import SelectConfig
from pillion.rewards.shaping import RewardConfig
from pillion.train.optim import OptimConfig
from pillion.train.trackers import LogConfig

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class AdvConfig:
    name: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae", "raw", "raft"] = "grpo"
    std_normalize: bool = True
    eps: float = 1e-6
    whiten: bool = False  # whiten advantages over the batch's valid tokens (verl GAE default)


@dataclass
class LossConfig:
    name: Literal["ppo_clip", "nll", "reinforce"] = "ppo_clip"  # nll: RAFT
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm.
    # Length bias (docs/algorithms.md §1.1): seq_mean_token_mean weighs a token by 1/L_i (short right
    # answers pushed harder, long wrong ones penalised less per token); token_mean weighs tokens
    # equally within a batch; seq_mean_token_sum_norm divides by a run constant (unbiased).
    agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = (
        "seq_mean_token_mean"
    )
    norm_len: int | None = None  # Dr. GRPO's constant; None: max_new_tokens
    kl_coef: float = 0.0
    kl_kind: Literal["k1", "k2", "k3", "low_var"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_coef: float = 0.0
    nll_coef: float = 0.0  # VAPO positive-example LM loss
    ratio_level: Literal["token", "sequence"] = "token"  # sequence: GSPO
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
    reject: Literal["none", "all_equal"] = "none"  # all_equal: Reinforce-Rej
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
    # weight per level inside every source (levels from the data, e.g. `pillion data difficulty`);
    # levels left out get 0, key null for problems without a level; None: level sizes
    level_weights: dict[int, float] | None = None
    format: str = "auto"
    on_error: Literal["raise", "skip"] = "raise"
    synthetic_size: int = 20000  # problems per synthetic source
    # Evaluation set (synthetic held-out never overlaps train), or several as a mapping name -> spec,
    # each evaluated and reported on its own (report.json: pass1_before/<name>, ...).
    heldout: str | dict[str, str] = "synthetic:1,2"
    heldout_size: int = 200
    # Longer prompts are dropped at load time, with a counted warning; None: the model's
    # context (max_position_embeddings) minus the generation budget.
    max_prompt_tokens: int | None = None
    template: str = "qa"  # a name in pillion.data.templates.TEMPLATES or a format with {question}
    history_resampling: bool = False  # SRPO
    stages: list[dict] = field(default_factory=list)  # [{sources: {name: weight}, steps: N}, ...]
    select: SelectConfig = field(default_factory=SelectConfig)  # concise phase: sometimes-solved problems


@dataclass
class LoraConfig:
    """Low-rank adapters on the projections (pillion/model/lora.py); rank 0 trains every weight."""

    rank: int = 0
    alpha: float = 32.0  # adapter output scaled by alpha / rank, as PEFT
    # Hugging Face projection names; pillion's fused q|k|v and gate|up take one adapter per name.
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class RefConfig:
    offload: bool = False  # keep the reference on CPU; copied to the device for its one pass per step


@dataclass
class CriticConfig:
    device: str = "auto"  # auto: the policy's device; or cpu | cuda | cuda:1 ...


@dataclass
class CheckpointingConfig:
    """Activation checkpointing of transformer blocks (recompute in backward, non-reentrant)."""

    name: str = "none"  # none | blocks (every block) | every_k (blocks 0, k, 2k, ...)
    k: int = 2


@dataclass
class FsdpConfig:
    """Several ranks under torchrun (pillion/train/parallel.py); ignored in one process."""

    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy (CUDA): shards, gradients, optimizer state in CPU memory
    timeout_s: int = 1800  # a collective waiting longer (a rank stuck or gone) fails the job


@dataclass
class ToolConfig:
    """Python tool calls inside rollouts (pillion/rollout/tools.py); max_calls 0: no tools."""

    max_calls: int = 0  # per sample
    start: str = "```python"  # a call's code follows the last start marker ...
    end: str = "```output"  # ... and is run when the model writes the end marker
    output: str = "\n{output}\n```\n"  # appended after the end marker (context only, never trained on)
    max_output_tokens: int = 64
    timeout: float = 5.0  # seconds per call (wall clock; CPU seconds likewise, rounded up)


@dataclass
class TrainConfig:
    algo: str = "grpo"
    model: str = "default"  # a Hugging Face folder; "default": the shipped tiny arithmetic model
    out: str | None = None  # run directory; default runs/<time>-<algo>
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU intra-op threads: auto counts the cores other work leaves free (one for tiny models;
    # pillion/threads.py); a number sets it
    threads: int | Literal["auto"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: int = 60  # the CPU default: ~1.5 min of GRPO on 2 cores
    prompts_per_step: int = 32
    group_size: int = 8
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 128  # rows per forward/backward
    # > 0: micro-batches of at most this many tokens (prompt + response, packed without padding),
    # balanced; a row longer than it runs alone. 0: `micro_batch` rows each
    micro_batch_tokens: int = 0
    mini_batches: int = 1  # optimizer steps per rollout batch and epoch
    ppo_epochs: int = 1
    save_every: int = 20
    eval_every: int = 0  # 0: evaluate before and after training only
    max_bad_steps: int = 3  # non-finite updates in a row before the run stops
    grading_workers: int = 1
    compile: bool = False  # torch.compile the rollout decode step and the training forward (long runs)
    # Packed forwards run a prompt shared by a group's rows once (model/sequences.py); false: each
    # row's prompt runs in full (the same values up to float summation order)
    share_prompts: bool = True
    adv: AdvConfig = field(default_factory=AdvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    # Grade the final \boxed{} answer, the format every prompt template asks for.
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(answer_style="boxed"))
    data: DataConfig = field(default_factory=DataConfig)
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
class TinyModelConfig:
    """Sizes of a fresh random model (`sft init=tiny`), built by pillion/model/tiny.py."""

    family: Literal["llama", "qwen2", "qwen3"] = "qwen2"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    tie_word_embeddings: bool = True


@dataclass
class SFTConfig:
    model: str = "default"  # a Hugging Face folder to fine-tune (ignored with init=tiny)
    init: Literal["none", "tiny"] = "none"  # tiny: start from a fresh random model of size `tiny`
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | Literal["auto"] = "auto"  # CPU intra-op threads, as TrainConfig.threads
    dtype: Literal["float32", "bfloat16"] = "float32"
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=48))
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)


class ConfigError(UserError):
    """A config key, value or file that cannot be used; the message names the key."""


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _describe(annotation: Any) -> str:
    """A type annotation as a user reads it: `int | Literal["auto"]` -> "an int or auto"."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is Literal:
        return ", ".join(map(str, typing.get_args(annotation)))
    name = getattr(origin or annotation, "__name__", str(annotation))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


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
        raise ConfigError(f"config key '{key}': {value!r} is not {_describe(annotation)}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
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


def set_key(cfg, key: str, value: Any, _name: str | None = None) -> None:
    """Set a dotted key on a dataclass tree, type-checked; a group given a scalar sets `.name`.
    (`_name`: the key as the user wrote it, for messages, when a group's `.name` is set.)"""
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
                    set_key(current, "name", value, _name=key)
                else:
                    raise ConfigError(f"config key '{key}' is a group; set its fields ({', '.join(_fields(current))})")
                return
            node = current
            continue
        if not last:
            raise ConfigError(f"unknown config key '{key}' ('{'.'.join(parts[:i + 1])}' is not a group)")
        setattr(node, part, _check_type(_name or key, value, typing.get_type_hints(type(node))[part]))


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
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", e)
            raise ConfigError(f"config key '{key.strip()}': cannot parse {raw!r} ({problem})") from None
        out.append((key.strip(), value))
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: malformed YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return data


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset algo={name!r}; presets: {', '.join(available)}")
    return path


def resolve(cls, config_file: str | None = None, overrides: list[str] | None = None, preset_key: str | None = "algo",
            base: dict | None = None):
    """Build a config of dataclass `cls` from defaults, preset, file and key=value overrides.
    `base` (a saved run's config.yaml, when resuming) replaces defaults and preset."""
    cfg = cls()
    file_pairs = _flatten(cfg, load_yaml(config_file)) if config_file else []
    cli_pairs = parse_overrides(overrides or [])
    layers = []
    if base is not None:
        layers.append(_flatten(cfg, base))
    elif preset_key:
        algo = dict(file_pairs + cli_pairs).get(preset_key, getattr(cfg, preset_key))
        layers.append(_flatten(cfg, load_yaml(preset_path(algo))))
    for pairs in layers + [file_pairs, cli_pairs]:
        for key, value in pairs:
            set_key(cfg, key, value)
    validate(cfg)
    return cfg


def _require(ok: bool, key: str, value: Any, allowed: str, problem: str = "is out of range") -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {value!r} {problem}; expected {allowed}")


def validate(cfg) -> None:
    """Ranges and cross-module choices of a resolved TrainConfig or SFTConfig (see the docstring)."""
    from pillion.data.formats import FORMATS
    from pillion.data.templates import resolve_template
    from pillion.rewards.extract import STYLES

    def at_least(key: str, low: float) -> None:
        value = _get(cfg, key)
        _require(value >= low, key, value, f">= {low}")

    def positive(key: str) -> None:
        value = _get(cfg, key)
        _require(value > 0, key, value, "> 0")

    def probability(key: str) -> None:
        value = _get(cfg, key)
        _require(0 < value <= 1, key, value, "a value in (0, 1]")

    _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device) is not None, "device", cfg.device,
             "auto, cpu, cuda or cuda:N", "is not a device")
    _require(cfg.threads == "auto" or cfg.threads >= 1, "threads", cfg.threads, "auto or >= 1")
    for key in ("steps", "eval.k", "eval.max_new_tokens", "eval.batch_prompts"):
        at_least(key, 1)
    for key in ("warmup_steps", "weight_decay", "data.heldout_size", "eval.temperature"):
        at_least(key, 0)
    positive("lr")
    positive("grad_clip")
    probability("eval.top_p")
    _require(cfg.data.format == "auto" or cfg.data.format in FORMATS, "data.format", cfg.data.format,
             f"auto or one of {', '.join(FORMATS)}", "is not a format")
    _require(cfg.data.synthetic_size >= 1, "data.synthetic_size", cfg.data.synthetic_size, ">= 1")
    try:
        resolve_template(cfg.data.template)
    except ValueError as e:
        raise ConfigError(f"config key 'data.template': {e}") from None
    if isinstance(cfg, TrainConfig):
        for key in ("prompts_per_step", "group_size", "max_new_tokens", "micro_batch", "mini_batches",
                    "ppo_epochs", "save_every", "max_bad_steps", "grading_workers", "filter.max_gen_batches"):
            at_least(key, 1)
        for key in ("eval_every", "top_k", "micro_batch_tokens", "loss.clip_low", "loss.clip_high", "loss.kl_coef",
                    "loss.entropy_coef", "loss.nll_coef", "ppo.value_pretrain_steps"):
            at_least(key, 0)
        positive("temperature")  # log-probs divide by it: 0 would make every update NaN
        positive("reward.timeout")
        positive("ppo.critic_lr")
        probability("top_p")
        _require(cfg.reward.answer_style in STYLES, "reward.answer_style", cfg.reward.answer_style,
                 f"one of {', '.join(STYLES)}", "is not an answer style")
        _require(cfg.loss.dual_clip is None or cfg.loss.dual_clip > 1, "loss.dual_clip", cfg.loss.dual_clip,
                 "null or a value > 1")
        _require(cfg.loss.tis_cap is None or cfg.loss.tis_cap > 0, "loss.tis_cap", cfg.loss.tis_cap,
                 "null or a value > 0")
        _require(cfg.loss.norm_len is None or cfg.loss.norm_len >= 1, "loss.norm_len", cfg.loss.norm_len,
                 "null or >= 1")
        _validate_tool(cfg.tool)
        if cfg.filter.dynamic_sampling and cfg.group_size < 2:
            raise ConfigError("config key 'group_size': dynamic sampling (filter.dynamic_sampling) needs "
                              f"group_size >= 2, got {cfg.group_size}")
        if cfg.group_size == 1 and cfg.adv.name in ("grpo", "dr_grpo", "rloo"):
            warnings.warn(f"group_size=1 with adv={cfg.adv.name}: every advantage is 0, nothing will be learned",
                          stacklevel=2)
    else:
        at_least("batch_size", 1)
    at_least("fsdp.timeout_s", 1)
    _validate_toolbox(cfg)


def _validate_tool(tool: ToolConfig) -> None:
    _require(tool.max_calls >= 0, "tool.max_calls", tool.max_calls, ">= 0 (0: no tools)")
    _require(tool.max_output_tokens >= 1, "tool.max_output_tokens", tool.max_output_tokens, ">= 1")
    _require(tool.timeout > 0, "tool.timeout", tool.timeout, "> 0 seconds")
    _require(tool.end != "", "tool.end", tool.end, "a marker the model writes to run its code", "is empty")
    _require(tool.output.count("{output}") == 1, "tool.output", tool.output, "text with {output} once",
             "is not a frame for the output")


def _validate_toolbox(cfg) -> None:
    """optim.*, data.level_weights, data.select.*, behaviour.*: ranges, each error naming its key."""
    from pillion.data.mixture import _level
    from pillion.eval.behaviour import phrase_pattern

    _require(0 <= cfg.optim.momentum < 1, "optim.momentum", cfg.optim.momentum, "a value in [0, 1)")
    _require(0 < cfg.optim.rank_fraction <= 1, "optim.rank_fraction", cfg.optim.rank_fraction, "a value in (0, 1]")
    for level, weight in (cfg.data.level_weights or {}).items():
        try:
            _level(level)
        except ValueError:
            raise ConfigError(f"config key 'data.level_weights': key {level!r} is not a level (an int) "
                              "or null") from None
        _require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0,
                 f"data.level_weights.{level}", weight, "a number >= 0")
    select = cfg.data.select
    _require(select.size >= 0, "data.select.size", select.size, ">= 0 (0: no selection)")
    _require(select.k >= 1, "data.select.k", select.k, ">= 1")
    _require(select.max_candidates >= 1, "data.select.max_candidates", select.max_candidates, ">= 1")
    _require(0 <= select.min_pass <= select.max_pass <= 1, "data.select.min_pass", select.min_pass,
             f"0 <= min_pass <= max_pass ({select.max_pass}) <= 1")
    if isinstance(cfg, TrainConfig):
        _validate_stages(cfg)
        _require(cfg.behaviour.kl_probe_every >= 0, "behaviour.kl_probe_every", cfg.behaviour.kl_probe_every,
                 ">= 0 (0: off)")
        _require(cfg.behaviour.kl_probe_rows >= 1, "behaviour.kl_probe_rows", cfg.behaviour.kl_probe_rows, ">= 1")
        try:
            phrase_pattern(cfg.behaviour.phrases)
        except ValueError as e:
            raise ConfigError(f"config key {e}") from None


def _validate_stages(cfg: TrainConfig) -> None:
    """data.stages (data/history.py parse_stages: sources or presets) and data.select's limits."""
    from pillion.data.history import parse_stages

    try:
        stages = parse_stages(cfg.data.stages, cfg.data.sources) if cfg.data.stages else []
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for i, stage in enumerate(stages):
        if stage.preset is not None:
            try:
                preset_path(stage.preset)
            except ConfigError as e:
                raise ConfigError(f"data.stages[{i}].preset: {e}") from None
    if cfg.data.select.size and (cfg.data.weights or any(stage.preset is None for stage in stages)):
        raise ConfigError("config key 'data.select.size': the selected problems form one pool, so data.weights "
                          "and data.stages with sources cannot apply; drop them or set data.select.size=0")


def _get(cfg, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dumps(cfg) -> str:
    """The resolved config as YAML (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg, path: str | Path) -> None:
    Path(path).write_text(dumps(cfg))


def from_dict(cls, data: dict):
    """Rebuild a saved config (e.g. a run directory's config.yaml) with the same checks."""
    cfg = cls()
    for key, value in _flatten(cfg, data):
        set_key(cfg, key, value)
    validate(cfg)
    return cfg
