"""Config fields that declare the values they take, and the walk that checks every leaf.

A config group is a dataclass that lives beside the code that uses it. A leaf's annotation is
its type, and a choice is a `Literal`. A leaf whose type does not say everything (a number, a
string, a mapping, a list) declares the rest beside its default:

    steps: int = bounded(60, low=1)                              # >= 1
    top_p: float = bounded(1.0, low=0, high=1, open="low")       # (0, 1]
    dual_clip: float | None = bounded(None, low=1, open="low")   # null or > 1
    model: str = free("default")                                 # any str: a folder, checked when loaded
    device: str = checked("auto", check_device)                  # check(value, group) raises ValueError

`check_tree` walks a whole config: every leaf's value has its type, then its range, then its
check (a check may read the leaf's group, for a bound set by a sibling). A leaf that is neither
a bool nor a `Literal` and declares nothing is a programming error (TypeError), so a key cannot
be added without its check. A user's error is a `ConfigError`, one line naming the key.

`ranks=` says how a leaf meets several ranks (pillion/train/parallel.py `check`): "split" is a
global count divided among them (a multiple of their number); every other key means the same
at any number of ranks. `aka=` lists the names other projects give
a key, so that an unknown key suggests it ("ppo.gae_lambda": did you mean ppo.lam?).

Command-line options are checked the same way before any work starts: `option(low=1)` is an
argparse type with a range, and `option_like(EvalConfig, "k")` takes the type and range a config
field declares, so `pillion eval --k 0` is refused as `eval.k=0` is.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pillion.errors import UserError

SPEC = "pillion"  # the key of a field's metadata that holds its Spec


class ConfigError(UserError):
    """A config key, value or file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Spec:
    """What a leaf takes beyond its type; see the module docstring."""

    low: float | None = None
    high: float | None = None
    open: Literal["", "low", "high", "both"] = ""  # which bounds are strict
    note: str = ""  # appended to the allowed range in messages, e.g. "0: off"
    check: Callable[[Any, Any], None] | None = None  # (value, group): raises ValueError or ConfigError
    aka: tuple[str, ...] = ()
    ranks: Literal["any", "split"] = "any"


def _field(default: Any, spec: Spec) -> Any:
    if isinstance(default, (list, dict)):  # a fresh copy per instance
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata={SPEC: spec})
    return dataclasses.field(default=default, metadata={SPEC: spec})


def bounded(default: Any, low: float | None = None, high: float | None = None, *,
            open: Literal["", "low", "high", "both"] = "", note: str = "", check=None, aka: str | tuple = (),
            ranks: Literal["any", "split"] = "any") -> Any:
    """A number in [low, high] (`open` makes a bound strict); null passes when the type allows it.
    In a mapping or list, each number is checked."""
    if low is None and high is None:
        raise TypeError("bounded() needs low or high; use free() for any value")
    aka = (aka,) if isinstance(aka, str) else tuple(aka)
    return _field(default, Spec(low, high, open, note, check, aka, ranks))


def checked(default: Any, check: Callable[[Any, Any], None], *, note: str = "", aka: str | tuple = (),
            ranks: Literal["any", "split"] = "any") -> Any:
    """A value `check(value, group)` accepts: it raises ValueError (the message after the key,
    e.g. "'x' is not a format; expected ...") or ConfigError (the whole message)."""
    aka = (aka,) if isinstance(aka, str) else tuple(aka)
    return _field(default, Spec(note=note, check=check, aka=aka, ranks=ranks))


def free(default: Any, *, aka: str | tuple = (), ranks: Literal["any", "split"] = "any") -> Any:
    """Any value of the type: a name or path checked where it is used, a seed, a reward value
    (or a bool or Literal, whose type says it all, that needs only `aka=` or `ranks=`)."""
    aka = (aka,) if isinstance(aka, str) else tuple(aka)
    return _field(default, Spec(aka=aka, ranks=ranks))


def reject(value: Any, problem: str, allowed: str) -> ValueError:
    """The ValueError a check raises: "<value> <problem>; expected <allowed>" (after the key)."""
    return ValueError(f"{value!r} {problem}; expected {allowed}")


# ---------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------

def describe(annotation: Any) -> str:
    """A type annotation as a user reads it: `int | Literal["auto"]` -> "an int or auto"."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is Literal:
        return ", ".join(map(str, typing.get_args(annotation)))
    name = getattr(origin or annotation, "__name__", str(annotation))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def convert(key: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the field's type, or raise ConfigError naming the key. The
    values of a mapping and the items of a list are checked too (keys, as `key.name` / `key[i]`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': {value!r} is not {describe(annotation)}")
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
            value = float(value)
        except ValueError:
            pass
    if target is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if target in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {target.__name__}, got {value!r}")
    if not isinstance(value, target):
        raise ConfigError(f"config key '{key}': expected {getattr(target, '__name__', target)}, got {value!r}")
    if target is float and math.isnan(value):
        raise ConfigError(f"config key '{key}': nan is not a number")
    args = typing.get_args(annotation)
    if target is dict and args:
        return {k: convert(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if target is list and args:
        return [convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    return value


def declared_by_type(annotation: Any) -> bool:
    """True when the type alone says every value a leaf takes: a bool, a Literal, or a union of those."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or declared_by_type(a) for a in typing.get_args(annotation))
    return annotation is bool or origin is Literal


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, evaluated (the modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def is_group(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


# ---------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------

@dataclass
class Leaf:
    key: str  # dotted, e.g. "loss.clip_high"
    value: Any
    annotation: Any
    field: dataclasses.Field
    group: Any  # the dataclass instance that holds it

    @property
    def spec(self) -> Spec | None:
        return self.field.metadata.get(SPEC)

    @property
    def default(self) -> Any:
        """The group's own default (a composed config may start a group elsewhere)."""
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default


def leaves(cfg: Any, prefix: str = "") -> Iterator[Leaf]:
    """Every leaf of a config tree, depth first in field order."""
    types_ = hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if is_group(types_[f.name]):
            if not isinstance(value, types_[f.name]):
                raise TypeError(f"config group '{prefix}{f.name}' holds {value!r}, not a {types_[f.name].__name__}")
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield Leaf(prefix + f.name, value, types_[f.name], f, cfg)


def _bound(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def allowed_range(spec: Spec, nullable: bool = False) -> str:
    """The range a Spec allows as a message says it: ">= 1", "a value in (0, 1]", "null or a value > 1"."""
    low_open, high_open = spec.open in ("low", "both"), spec.open in ("high", "both")
    if spec.low is not None and spec.high is not None:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        text = f"a value in {left}{_bound(spec.low)}, {_bound(spec.high)}{right}"
    elif spec.low is not None:
        text = f"{'>' if low_open else '>='} {_bound(spec.low)}"
    else:
        text = f"{'<' if high_open else '<='} {_bound(spec.high)}"
    if nullable:
        text = "null or " + (text if text.startswith("a value") else f"a value {text}")
    return f"{text} ({spec.note})" if spec.note else text


def in_range(value: float, spec: Spec) -> bool:
    low_open, high_open = spec.open in ("low", "both"), spec.open in ("high", "both")
    if spec.low is not None and not (value > spec.low if low_open else value >= spec.low):
        return False
    return spec.high is None or (value < spec.high if high_open else value <= spec.high)


def _numbers(key: str, value: Any) -> Iterator[tuple[str, float]]:
    """(key, number) for a number, or for each number in a mapping or list."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(f"{key}[{i}]", v)


def check_leaf(leaf: Leaf) -> None:
    """The leaf's type and range (its check runs in `check_tree`, after every range)."""
    spec = leaf.spec
    if spec is None and not declared_by_type(leaf.annotation):
        raise TypeError(f"config key '{leaf.key}' ({type(leaf.group).__name__}.{leaf.field.name}) declares no "
                        "range or check: give it bounded(), checked() or free() (pillion/fields.py)")
    convert(leaf.key, leaf.value, leaf.annotation)
    if spec is None or (spec.low is None and spec.high is None):
        return
    nullable = type(None) in typing.get_args(leaf.annotation)
    for key, number in _numbers(leaf.key, leaf.value):
        if not in_range(number, spec):
            expected = allowed_range(spec, nullable)
            raise ConfigError(f"config key '{key}': {number!r} is out of range; expected {expected}")


def run_check(leaf: Leaf) -> None:
    if leaf.spec is None or leaf.spec.check is None:
        return
    try:
        leaf.spec.check(leaf.value, leaf.group)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config key '{leaf.key}': {e}") from None


def check_tree(cfg: Any) -> None:
    """Every leaf of `cfg`: its type and range first (all of them), then its check."""
    found = list(leaves(cfg))
    for leaf in found:
        check_leaf(leaf)
    for leaf in found:
        run_check(leaf)


# ---------------------------------------------------------------------------------------------
# Command-line options
# ---------------------------------------------------------------------------------------------

def option(low: float | None = None, high: float | None = None, *, open: Literal["", "low", "high", "both"] = "",
           kind: type = int, note: str = "") -> Callable[[str], Any]:
    """An argparse `type=`: the text as an int (or float) in the range, else a one-line error
    ("0 is out of range; expected >= 1")."""
    spec = Spec(low, high, open, note)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {describe(kind)}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (low is not None or high is not None) and not in_range(value, spec):
            raise argparse.ArgumentTypeError(f"{value!r} is out of range; expected {allowed_range(spec)}")
        return value

    parse.__name__ = kind.__name__
    return parse


def option_like(group: type, name: str) -> Callable[[str], Any]:
    """The argparse type of config field `name` of dataclass `group`: its number type and range."""
    f = next(f for f in dataclasses.fields(group) if f.name == name)
    spec = f.metadata.get(SPEC) or Spec()
    return option(spec.low, spec.high, open=spec.open, kind=hints(group)[name], note=spec.note)
