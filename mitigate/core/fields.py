"""Config fields: a default, a one-line help, and validation on construction and on assignment.

    @dataclass
    class TrainConfig(Section):
        lr: float = opt(3e-5, "AdamW learning rate", min=0.0)

`TrainConfig(lr=-1)` and `cfg.lr = -1` both raise `ConfigError` naming the key, the bad value and
the allowed range or choices; so does assigning a field that does not exist (`cfg.lrr = 1`).
Fields whose value is resolved through a registry (`{name: ..., <fields>}`) carry a `resolve`
callable in their metadata, supplied by whoever owns that registry.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import field
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad config key or value; the message names it and the allowed choices."""


INT_LIMIT = 10**18  # below 2**63: any integer setting fits torch's and numpy's int64


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, resolve: typing.Callable | None = None):
    """A config field: default, one-line help, and optional validation.

    `default` may be a value, a list or dict (copied per instance) or a dataclass type (built
    per instance). `resolve(value, where)` turns raw YAML into the field's value (registries)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "resolve": resolve}
    if isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def suggest(key: str, allowed: list[str], where: str = "") -> str:
    """' did you mean X? allowed: a, b, c' for error messages (X as the dotted path under `where`)."""
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" did you mean '{join(where, close[0])}'?" if close else ""
    return f"{hint} allowed: {', '.join(sorted(allowed))}"


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Check (and where lossless, convert) a YAML value against a field's annotated type."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"bad value {value!r} for '{where}'; allowed: {', '.join(map(str, choices))}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        if not -INT_LIMIT < value < INT_LIMIT:  # torch and numpy hold at most 64-bit integers
            raise ConfigError(f"'{where}' must be an integer of at most 18 digits, got one of "
                              f"{len(str(abs(int(value))))} digits")
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-5` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"'{where}' must be a finite number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{where}' must be a string, got {value!r}")
        return value
    if typ is list and not isinstance(value, list):
        raise ConfigError(f"'{where}' must be a list, got {value!r}")
    if typ is dict and not isinstance(value, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
    return value


def check_range(value: Any, meta: dict, where: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"bad value {value!r} for '{where}'; allowed: {', '.join(map(str, meta['choices']))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise ConfigError(f"'{where}' must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ConfigError(f"'{where}' must be <= {hi}, got {value}")


class Section:
    """Base of every config dataclass: each assignment (the dataclass __init__ included) is
    checked against the field's type, range and choices; unknown attributes are refused.

    `_where` is the section's dotted path in the whole config ('train', 'train.objective'), used in
    messages; `build` sets it, a directly constructed section reports bare field names."""

    _where: str = ""

    def __setattr__(self, name: str, value: Any) -> None:
        fields = _fields(type(self))
        where = join(self._where, name)
        if name not in fields:
            if name.startswith("_"):
                return object.__setattr__(self, name, value)
            raise ConfigError(f"unknown config key '{where}';{suggest(name, list(fields))}")
        value = validate_field(type(self), fields[name], value, where)
        missing = object()
        old = self.__dict__.get(name, missing)
        object.__setattr__(self, name, value)
        if getattr(self, "_ready", False) and hasattr(self, "validate"):
            try:
                self.validate()
            except ValueError as e:  # keep the section valid: undo, then report
                if old is missing:
                    object.__delattr__(self, name)
                else:
                    object.__setattr__(self, name, old)
                raise ConfigError(str(e)) from e

    def __post_init__(self) -> None:
        if hasattr(self, "validate"):
            try:
                self.validate()
            except ValueError as e:
                raise ConfigError(str(e)) from e
        object.__setattr__(self, "_ready", True)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def validate_field(cls: type, f: dataclasses.Field, value: Any, where: str) -> Any:
    resolve = f.metadata.get("resolve")
    if resolve is not None:
        return resolve(value, where)
    typ = typing.get_type_hints(cls)[f.name]
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if isinstance(value, dict):
            return build(typ, value, where)
        raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
    value = coerce(value, typ, where)
    check_range(value, f.metadata, where)
    return value


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """Instantiate section `cls` from a (partial) mapping: unknown keys are an error with a
    suggestion; missing keys take their defaults; nested sections recurse."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or 'config'}' must be a mapping, got {data!r}")
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown config key '{join(where, key)}';{suggest(key, list(fields), where)}"
                              f" (in '{where or 'config'}')")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = data[name]
        elif f.metadata.get("resolve") is not None or dataclasses.is_dataclass(typing.get_type_hints(cls)[name]):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            kwargs[name] = to_dict(default)  # resolved like a given value, with its path in messages
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_where", where)
    obj.__init__(**kwargs)
    return obj


def to_dict(obj: Any) -> Any:
    """A section (or list of sections) as plain YAML-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, list):
        return [to_dict(x) for x in obj]
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field, recursing into sections (for docs and --help)."""
    rows = []
    for f in dataclasses.fields(cls):
        key = join(prefix, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and f.metadata.get("resolve") is None:
            rows += describe(type(default), key)
        else:
            rows.append((key, to_dict(default), f.metadata.get("help", "")))
    return rows
