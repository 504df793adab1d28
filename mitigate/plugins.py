"""A user's own registrations, with no edit to the package: `--import module_or_file` on every
command, and the `mitigate.plugins` entry-point group for installed packages.

A plugin is any module that registers something on import (`@register_regularizer(...)`, ...)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

from mitigate.core.fields import ConfigError

ENTRY_POINT_GROUP = "mitigate.plugins"
_loaded_entry_points = False


def import_plugin(spec: str):
    """Import a module by dotted name, or a `.py` file by path (registered under its stem)."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--import: no such file '{spec}'")
        name = f"mitigate_plugin_{path.stem}"
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path.resolve())
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise ConfigError(f"--import: cannot import module '{spec}' ({e}); pass a module on sys.path "
                          "or a path to a .py file") from e


def load_entry_points() -> None:
    """Import every module advertised under the `mitigate.plugins` entry-point group (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except ImportError as e:
            raise ConfigError(f"plugin '{ep.name}' ({ep.value}) of the {ENTRY_POINT_GROUP} entry points does not "
                              f"import: {e}") from e
