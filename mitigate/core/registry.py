"""One generic registry: objectives, regularizers, tasks and policies each own one instance,
defined beside what it registers (`mitigate.objectives`, `mitigate.tasks`, ...).

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("grpo", GRPOConfig)
    def grpo(batch, ctx, cfg): ...

An entry is a name, a target (function or class) and the dataclass of its config section, whose
`name` field holds the registered name. Looking up an unknown name raises `UnknownName` listing
every registered name and the closest one.

A registry also holds a manifest of its built-in names, each with the module (relative to the
registry's package) whose import registers it:

    OBJECTIVES = Registry("objective", "mitigate.objectives", {"grpo": "grpo", ...})

so that it knows those names without importing anything: `names()`, `in` and `check(name)` (what a
config needs to answer a typo) import nothing; `get(name)` imports the name's module the first time
the entry itself is needed. A plugin registers on import as before; a built-in name is refused to
any other module even before the built-in module is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mitigate.core.fields import ConfigError, suggest


class UnknownName(ConfigError):
    """A name that nothing registered; the message lists the registered names."""


class DuplicateName(ConfigError):
    """A name registered by two different targets (a plugin must pick another name)."""


def plugin_hint(e: Exception) -> str:
    """What to add to an error about a recorded run or checkpoint when the cause is an unknown
    registered name: the run was most likely made with a plugin that this command did not import."""
    if isinstance(e, UnknownName):
        return (". The run was probably made with a plugin: pass the same --import MODULE_OR_FILE that registered "
                "it")
    return ""


@dataclass(frozen=True)
class Entry:
    name: str
    target: Callable  # function or class
    config: type | None  # dataclass of the config section (None: takes no settings)


def _origin(target) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


class Registry:
    def __init__(self, kind: str, package: str = "", builtins: Mapping[str, str] | None = None):
        """`builtins`: name -> module (relative to `package`) whose import registers that name."""
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry] = {}
        self._builtins = {name: f"{package}.{module}" if package else module
                          for name, module in (builtins or {}).items()}

    def register(self, name: str, config: type | None = None):
        """Decorator: register `target` under `name` with its config dataclass."""

        def deco(target):
            old = self._entries.get(name)
            if old is not None and _origin(old.target) != _origin(target):  # re-importing one module is fine
                raise DuplicateName(f"{self.kind} '{name}' is already registered by {_origin(old.target)}; "
                                    f"{_origin(target)} must pick another name")
            home = self._builtins.get(name)
            module = getattr(target, "__module__", "?")
            if old is None and home is not None and not (module == home or module.startswith(f"{home}.")):
                raise DuplicateName(f"{self.kind} '{name}' is already registered by {home} (a built-in); "
                                    f"{_origin(target)} must pick another name")
            self._entries[name] = Entry(name, target, config)
            return target

        return deco

    def check(self, name: str, where: str = "") -> None:
        """Raise `UnknownName` unless `name` is registered or built in; imports nothing."""
        if name not in self:
            at = f" at '{where}'" if where else ""
            raise UnknownName(f"unknown {self.kind} '{name}'{at};{suggest(str(name), self.names())}".replace(
                " allowed:", " registered:"))

    def loaded(self, name: str) -> bool:
        """Whether `name`'s entry is in memory (registered, or its built-in module imported)."""
        return name in self._entries

    def get(self, name: str, where: str = "") -> Entry:
        """The entry of `name`, importing its built-in module on first use."""
        self.check(name, where)
        if name not in self._entries:
            importlib.import_module(self._builtins[name])
            if name not in self._entries:
                raise RuntimeError(f"{self._builtins[name]} was expected to register {self.kind} '{name}' "
                                   "(the manifest of built-in names is out of date)")
        return self._entries[name]

    def builtins(self) -> dict[str, str]:
        """The manifest: built-in name -> the module that registers it."""
        return dict(self._builtins)

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._builtins})

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._builtins)
