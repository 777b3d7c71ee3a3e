"""`data.*`: the problems a run trains on (pools, their weights, levels) and is evaluated on.

The group `pillion train` and `pillion sft` share, with its choices and ranges declared
beside the fields (pillion/fields.py); the checks read the tables of the modules that use the
values (formats.py, templates.py, mixture.py). The training loop's own keys (SRPO stages,
history resampling, pass-rate selection) extend it in pillion/config.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pillion.data import synthetic, synthetic_code
from pillion.data.formats import FORMATS
from pillion.data.mixture import _level
from pillion.data.templates import resolve_template
from pillion.fields import ConfigError, bounded, checked, free, reject


def synthetic_levels(spec: str) -> tuple[int, ...] | None:
    """The levels a synthetic spec names ("synthetic:1,2", "synthetic_code:1"; none: the
    curriculum's default), checked against the curriculum's levels; None for a dataset file."""
    for prefix, module in (("synthetic_code", synthetic_code), ("synthetic", synthetic)):
        if spec == prefix or spec.startswith(prefix + ":"):
            try:
                levels = tuple(int(x) for x in spec.partition(":")[2].split(",") if x.strip())
            except ValueError:
                raise ValueError(f"{spec!r}: levels are integers, e.g. {prefix}:1,2") from None
            bad = [level for level in levels if level not in module.LEVELS]
            if bad:
                raise ValueError(f"{spec!r} names level {bad[0]}, which {prefix} does not have (its levels: "
                                 f"{', '.join(map(str, module.LEVELS))})")
            return levels
    return None


def _sources(sources: dict[str, str], data: DataConfig) -> None:
    if not sources:
        raise reject(sources, "names no source", "a mapping name -> dataset file or synthetic:LEVELS")
    for name, spec in sources.items():
        try:
            synthetic_levels(spec)
        except ValueError as e:
            raise ConfigError(f"config key 'data.sources.{name}': {e}") from None


def _weights(weights: dict[str, float] | None, data: DataConfig) -> None:
    if weights is None:
        return
    unknown = sorted(map(str, set(weights) - set(data.sources)))
    if unknown:
        raise reject(weights, f"names {unknown}, which are not in data.sources", ", ".join(map(str, data.sources)))
    if sum(weights.values()) <= 0:
        raise reject(weights, "gives every source weight 0", "a positive weight for at least one source")


def _level_keys(level_weights: dict[int, float] | None, data: DataConfig) -> None:
    for level in level_weights or {}:
        try:
            _level(level)
        except ValueError:
            raise ValueError(f"key {level!r} is not a level (an int) or null") from None


def _format(name: str, data: DataConfig) -> None:
    if name != "auto" and name not in FORMATS:
        raise reject(name, "is not a format", f"auto or one of {', '.join(FORMATS)}")


def _template(template: str, data: DataConfig) -> None:
    resolve_template(template)  # ValueError: "unknown template ..."


@dataclass
class DataConfig:
    # Training pools, name -> spec. A spec is a dataset file (.jsonl/.json/.parquet) or
    # "synthetic:LEVELS" (the arithmetic curriculum, e.g. "synthetic:1,2,3") or
    # "synthetic_code:LEVELS" (the code curriculum, pillion/data/synthetic_code.py).
    sources: dict[str, str] = checked({"arith": "synthetic:1,2"}, _sources)
    # sampling weight per source (sources left out get 0); None: in proportion to the pools' sizes
    weights: dict[str, float] | None = bounded(None, low=0, check=_weights)
    # weight per level inside every source (levels from the data, e.g. `pillion data difficulty`);
    # levels left out get 0, key null for problems without a level; None: level sizes
    level_weights: dict[int, float] | None = bounded(None, low=0, check=_level_keys)
    format: str = checked("auto", _format)
    on_error: Literal["raise", "skip"] = "raise"
    synthetic_size: int = bounded(20000, low=1)  # problems per synthetic source
    # Evaluation set (synthetic held-out never overlaps train), or several as a mapping name -> spec,
    # each evaluated and reported on its own (report.json: pass1_before/<name>, ...).
    heldout: str | dict[str, str] = free("synthetic:1,2")
    heldout_size: int = bounded(200, low=0, note="0: no held-out evaluation")
    # Longer prompts are dropped at load time, with a counted warning; None: the model's
    # context (max_position_embeddings) minus the generation budget.
    max_prompt_tokens: int | None = bounded(None, low=1)
    template: str = checked("qa", _template)  # a name in pillion.data.templates.TEMPLATES or a format with {question}
