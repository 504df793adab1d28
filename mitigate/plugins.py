"""A user's own registrations, with no edit to the package: `--import module_or_file` on every
command, and the `mitigate.plugins` entry-point group for installed packages.

A plugin is any module that registers something on import (`@register_regularizer(...)`, ...)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from importlib import metadata
from pathlib import Path

from mitigate.core.fields import ConfigError
from mitigate.core.registry import DuplicateName

ENTRY_POINT_GROUP = "mitigate.plugins"
_loaded_entry_points = False


def import_plugin(spec: str):
    """Import a module by dotted name, or a `.py` file by path (registered under its stem). A plugin
    that does not import (syntax error, an exception, a name registered twice) is a `ConfigError`
    saying why, in one line."""
    path = Path(spec)
    if not spec.strip() or (spec.startswith(".") and not spec.endswith(".py") and not path.is_file()):
        raise ConfigError(f"--import needs a module name (e.g. my_plugins.terms) or the path of a .py file, got "
                          f"{spec!r}")
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
        except Exception as e:
            del sys.modules[name]
            raise ConfigError(f"--import '{spec}': {failure(e)}") from e
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        if e.name is not None and spec != e.name and not spec.startswith(f"{e.name}."):
            raise ConfigError(f"--import '{spec}': {failure(e)}") from e  # the plugin's own import failed
        raise ConfigError(f"--import: cannot import module '{spec}' ({e}); pass a module on sys.path "
                          "or a path to a .py file") from e
    except Exception as e:
        raise ConfigError(f"--import '{spec}': {failure(e)}") from e


def failure(e: Exception) -> str:
    """One line on why a plugin did not import: a syntax error with its place, a name registered
    twice (the registry's own message), or the exception the plugin raised, where it raised it."""
    if isinstance(e, SyntaxError):
        return f"syntax error in '{e.filename}', line {e.lineno}: {e.msg}"
    if isinstance(e, DuplicateName):
        return str(e)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    where = f" (at '{frames[-1].filename}', line {frames[-1].lineno})" if frames else ""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"the plugin raised {type(e).__name__}{': ' + first if first else ''}{where}"


def load_entry_points() -> None:
    """Import every module advertised under the `mitigate.plugins` entry-point group (once)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise ConfigError(f"plugin '{ep.name}' ({ep.value}) of the {ENTRY_POINT_GROUP} entry points does not "
                              f"import: {failure(e)}") from e
