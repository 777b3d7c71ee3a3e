"""A dataclass config tree from layers: defaults -> preset -> file -> `key=value` arguments.

    cfg = resolve(TrainConfig, "run.yaml", ["loss.clip_high=0.28"], preset=preset_path, validate=check)
    text = dumps(cfg)                      # what a run folder's config.yaml holds
    again = from_dict(TrainConfig, yaml.safe_load(text), validate=check)   # == cfg

Keys are dotted paths into the tree (`loss.clip_high`, `reward.overlong.enable`); values are
parsed as YAML scalars and converted to the field's type (pillion/fields.py), so a wrong type
is an error naming the key when it is set. A group given a scalar sets its `name`
(`optim=muon` is `optim.name=muon`). An unknown key is an error that offers the closest names
and the names other projects use for a key (`aka=`). A YAML mapping descends only into groups:
a mapping-valued field (`data.sources`) is replaced whole, never merged.

Generic over the config class: the command's configs, their presets and their checks are
composed in pillion/config.py.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pillion.fields import SPEC, ConfigError, check_tree, convert, hints, is_group


def _fields(node) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(node)}


def _suggest(node, part: str) -> list[str]:
    """Field names of `node` close to `part`, then those that declare `part` as another project's name."""
    fields = _fields(node)
    close = difflib.get_close_matches(part, fields, n=3)
    known = [name for name, f in fields.items() if SPEC in f.metadata and part in f.metadata[SPEC].aka]
    return known + [name for name in close if name not in known]


def set_key(cfg, key: str, value: Any, _name: str | None = None) -> None:
    """Set a dotted key on a dataclass tree, type-checked; a group given a scalar sets `.name`.
    (`_name`: the key as the user wrote it, for messages, when a group's `.name` is set.)"""
    parts = key.split(".")
    outer = _name[: -len(key)] if _name and _name.endswith(key) else ""  # a group's mapping: its key and "."
    node = cfg
    for i, part in enumerate(parts):
        fields = _fields(node)
        if part not in fields:
            close = _suggest(node, part)
            hint = f" (did you mean {', '.join(outer + '.'.join(parts[:i] + [c]) for c in close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{outer}{key}'{hint}")
        annotation = hints(type(node))[part]
        last = i == len(parts) - 1
        if is_group(annotation):
            current = getattr(node, part)
            if last:
                if isinstance(value, dict):
                    for k, v in value.items():
                        set_key(current, k, v, _name=f"{_name or key}.{k}")
                elif "name" in _fields(current):
                    set_key(current, "name", value, _name=_name or key)
                else:
                    raise ConfigError(f"config key '{_name or key}' is a group; set its fields "
                                      f"({', '.join(_fields(current))})")
                return
            node = current
            continue
        if not last:
            raise ConfigError(f"unknown config key '{outer}{key}' ('{outer}{'.'.join(parts[:i + 1])}' is not a group)")
        setattr(node, part, convert(_name or key, value, annotation))


def flatten(node, mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """YAML mapping -> dotted (key, value) pairs, descending only into dataclass groups."""
    out = []
    types_ = hints(type(node)) if dataclasses.is_dataclass(node) else {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and is_group(types_.get(k)):
            out += flatten(getattr(node, k), v, key + ".")
        else:
            out.append((key, v))
    return out


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key=value` arguments -> (key, YAML value) pairs; `key=` is null."""
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
    """A YAML file of config keys; a missing, undecodable or malformed file names the file (and line)."""
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


def resolve(cls, config_file: str | None = None, overrides: list[str] | None = None, *,
            preset: Callable[[str], Path] | None = None, preset_key: str | None = None, base: dict | None = None,
            validate: Callable[[Any], None] = check_tree):
    """A config of dataclass `cls` from its defaults, then the preset named by `preset_key`
    (`preset(name)` is its file; the name is the file's or the arguments' value, else the
    default), then `config_file`, then `overrides`; `base` (a saved run's config) replaces the
    defaults and the preset. `validate` runs once on the result."""
    cfg = cls()
    file_pairs = flatten(cfg, load_yaml(config_file)) if config_file else []
    cli_pairs = parse_overrides(overrides or [])
    layers = []
    if base is not None:
        layers.append(flatten(cfg, base))
    elif preset is not None and preset_key:
        name = dict(file_pairs + cli_pairs).get(preset_key, getattr(cfg, preset_key))
        layers.append(flatten(cfg, load_yaml(preset(name))))
    for pairs in layers + [file_pairs, cli_pairs]:
        for key, value in pairs:
            set_key(cfg, key, value)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dumps(cfg) -> str:
    """The resolved config as YAML (what a run folder's config.yaml holds; `from_dict` reads it back)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg, path: str | Path) -> None:
    Path(path).write_text(dumps(cfg))


def from_dict(cls, data: dict, validate: Callable[[Any], None] = check_tree):
    """Rebuild a saved config (e.g. a run directory's config.yaml) with the same checks."""
    cfg = cls()
    for key, value in flatten(cfg, data):
        set_key(cfg, key, value)
    validate(cfg)
    return cfg
