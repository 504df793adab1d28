"""Registries of objectives and regularizers, extension by registration.

    @register_objective("sdsd", SDSDConfig)
    def sdsd(batch: Batch, cfg: SDSDConfig) -> tuple[Tensor, dict[str, float]]: ...

    @register_regularizer("entropy", EntropyConfig)
    def entropy(batch: Batch, cfg: EntropyConfig) -> tuple[Tensor, dict[str, float]]: ...

Each config dataclass has a `name` field; regularizer configs also have `coef` (the loop adds
`coef * loss`). Registering is all a new method needs: the config section
`{name: ..., <fields>}` is parsed into the registered dataclass and the loop calls the function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("objective", "regularizer")


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    config: type


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}


def _register(kind: str, name: str, config: type):
    def deco(fn):
        if name in _REGISTRY[kind] and _REGISTRY[kind][name].fn is not fn:
            raise ValueError(f"{kind} '{name}' is already registered")
        _REGISTRY[kind][name] = Entry(name, fn, config)
        return fn

    return deco


def register_objective(name: str, config: type):
    return _register("objective", name, config)


def register_regularizer(name: str, config: type):
    return _register("regularizer", name, config)


def _load_builtins() -> None:
    importlib.import_module("mitigate.objectives")
    importlib.import_module("mitigate.regularizers")


def names(kind: str) -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str, where: str = "") -> Entry:
    from mitigate.config import ConfigError

    _load_builtins()
    if name not in _REGISTRY[kind]:
        import difflib

        known = sorted(_REGISTRY[kind])
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {kind} '{name}'{f' at {where}' if where else ''};{hint} "
                          f"registered: {', '.join(known)}")
    return _REGISTRY[kind][name]


def config_class(kind: str, name: str, where: str = "") -> type:
    return get(kind, name, where).config
