"""One generic registry: objectives, regularizers, tasks and policies each own one instance,
defined beside what it registers (`mitigate.objectives`, `mitigate.tasks`, ...).

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("grpo", GRPOConfig)
    def grpo(batch, ctx, cfg): ...

An entry is a name, a target (function or class) and the dataclass of its config section, whose
`name` field holds the registered name. Looking up an unknown name raises `UnknownName` listing
every registered name and the closest one.
"""

from __future__ import annotations

from collections.abc import Callable
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
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type | None = None):
        """Decorator: register `target` under `name` with its config dataclass."""

        def deco(target):
            old = self._entries.get(name)
            if old is not None and _origin(old.target) != _origin(target):  # re-importing one module is fine
                raise DuplicateName(f"{self.kind} '{name}' is already registered by {_origin(old.target)}; "
                                 f"{_origin(target)} must pick another name")
            self._entries[name] = Entry(name, target, config)
            return target

        return deco

    def get(self, name: str, where: str = "") -> Entry:
        if name not in self._entries:
            at = f" at '{where}'" if where else ""
            raise UnknownName(f"unknown {self.kind} '{name}'{at};{suggest(name, self.names())}".replace(
                " allowed:", " registered:"))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
