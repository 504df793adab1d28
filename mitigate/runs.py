"""Self-describing run folders, written atomically: work happens in a hidden temporary folder
next to the destination, which is renamed into place only when the command succeeds."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

PACKAGES = ("mitigate", "torch", "transformers", "accelerate", "numpy", "scipy", "pot", "scikit-learn")


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
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class OutputExists(FileExistsError):
    pass


@contextmanager
def run_folder(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    if out.exists() and not overwrite and any(out.iterdir()):
        raise OutputExists(f"output folder '{out}' exists and is not empty; pass --overwrite or pick another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_meta(folder: Path, config_yaml: str, seed: int, command: str) -> None:
    (folder / "config.yaml").write_text(config_yaml)
    meta = {"seed": seed, "command": command, "argv": sys.argv, "git": git_revision(),
            "versions": versions()}
    write_json(folder / "meta.json", meta)


def write_json(path: Path, obj) -> None:
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class MetricsLog:
    """Append-only JSONL of per-step scalars."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def log(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
