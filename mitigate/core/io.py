"""Run folders and atomic writes: the one place that creates, replaces or removes files.

Rules every command follows through this module:
- Work happens in a hidden temporary sibling (`.NAME.tmp-XXXX`) renamed into place on success and
  removed on failure, so no half-written output is ever visible under the real name.
- An existing non-empty destination is refused unless `overwrite` is given, and even then only a
  folder that mitigate itself created (it holds `.mitigate-run`) is replaced.
- A destination that is, contains or lies inside one of the command's inputs is always refused.
- A temporary folder left by a killed run is removed at the next run when its owner process is
  gone, and reported when it is still alive.
- Files and folders follow the user's umask (mkstemp/mkdtemp alone would make them owner-only).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

MARKER = ".mitigate-run"
PACKAGES = ("mitigate", "torch", "transformers", "accelerate", "numpy", "scipy", "pot", "scikit-learn")


class OutputError(ValueError):
    """An output path the command refuses to write (exists, not ours, or one of its inputs)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_not_input(out: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is, contains, or lies inside one of the inputs."""
    o = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        i = Path(inp).resolve()
        if o == i or i in o.parents or o in i.parents:
            raise OutputError(f"output '{out}' overlaps the input '{inp}'; write the output somewhere else")


def _clean_stale(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        owner = stale / ".owner"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)
            print(f"mitigate: removed '{stale}', left by a killed run (process {pid})", file=sys.stderr)
        elif pid != os.getpid():
            print(f"mitigate: note: '{stale}' is another run's work folder (process {pid}, still running "
                  "or unknown); left alone", file=sys.stderr)


def check_output(out: str | Path, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """The checks of `run_folder` without creating anything (call before long work)."""
    out = Path(out)
    check_not_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' exists and is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"output folder '{out}' exists and is not empty; pass --overwrite or pick another")
        if not (out / MARKER).is_file():
            raise OutputError(f"output folder '{out}' was not created by mitigate (no {MARKER}); "
                              "refusing to replace it even with --overwrite")
    return out


@contextmanager
def run_folder(out: str | Path, overwrite: bool = False, inputs: Iterable = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `out`, on error it is removed."""
    out = check_output(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    _follow_umask(tmp, directory=True)
    (tmp / ".owner").write_text(str(os.getpid()))
    try:
        yield tmp
        (tmp / ".owner").unlink()
        (tmp / MARKER).write_text("written by mitigate; `--overwrite` may replace this folder\n")
        _follow_umask(tmp / MARKER, directory=False)
        if out.exists():  # checked above: empty, or ours and overwrite was asked for
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside `path`; renamed onto `path` on success (any writer:
    text, JSON, savefig, safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _follow_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` on success (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    _follow_umask(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_meta(folder: Path, config_yaml: str, seed: int, command: str) -> None:
    write_text(folder / "config.yaml", config_yaml)
    write_json(folder / "meta.json", {"seed": seed, "command": command, "argv": sys.argv, "git": git_revision(),
                                      "versions": versions()})


class MetricsLog:
    """Append-only JSONL of per-step scalars."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def log(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if new:
            _follow_umask(self.path, directory=False)
