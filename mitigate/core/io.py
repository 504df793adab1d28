"""Run folders and atomic writes: the one place that creates, replaces or removes files.

Rules every command follows through this module:
- Work happens in a hidden temporary sibling (`.NAME.tmp-XXXX`) renamed into place on success and
  removed on failure, so no half-written output is ever visible under the real name.
- An existing non-empty destination is refused unless `overwrite` is given, and even then only a
  folder that mitigate itself created (it holds `.mitigate-run`) is replaced.
- A destination that is, contains or lies inside one of the command's inputs is always refused.
- A temporary folder left by a killed run is removed at the next run when its owner process is
  gone, and reported when it is still alive.
- Files and folders follow the user's umask (mkstemp/mkdtemp alone would make them owner-only, and
  safetensors writes 0600): every atomic folder and run folder is set so before it is renamed
  into place (`follow_umask_tree`).

Run commands that can resume (pretrain, train, reproduce) work instead in the visible sibling
`OUT.partial` (`plan_run`, `resumable_run`): renamed to `OUT` on success; on failure kept when it
holds something to resume from (a training checkpoint, a finished sub-run), removed otherwise
when this command created it, and never removed when it existed before (`--resume`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

MARKER = ".mitigate-run"
PACKAGES = ("mitigate", "torch", "transformers", "accelerate", "numpy", "scipy", "pot", "scikit-learn")


class OutputError(ValueError):
    """An output path the command refuses to write (exists, not ours, or one of its inputs)."""


class InputError(ValueError):
    """An input file that is truncated, corrupt or not what its name says (the message names it)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def follow_umask_tree(root: str | Path) -> None:
    """`root` and everything under it get the modes the umask gives a new file or folder: some
    writers choose their own (safetensors writes 0600, mkstemp/mkdtemp are owner-only), and a
    colleague must be able to read shared results. Links are left alone (a chmod follows them)."""
    root = Path(root)
    if root.is_symlink():
        return
    _follow_umask(root, directory=root.is_dir())
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                _follow_umask(path, directory=name in dirs)


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


def _work_name_extra(name: str) -> int:
    """Bytes the longest name this module makes from an output's `name` adds to it: its hidden
    temporary (`.NAME.tmp-XXXXXXXX`, `.NAME.XXXXXXXXSUFFIX`) or its work folder (`NAME.partial`)."""
    return max(len(".") + len(".tmp-") + 8, 2 + 8 + len(os.fsencode(Path(name).suffix)), len(PARTIAL_SUFFIX))


def check_name_lengths(out: Path, existing: Path) -> None:
    """Refuse an output path with a name the file system cannot hold (with the temporary names made
    from it), before anything is created. `existing`: its nearest existing folder."""
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    new_parts = out.relative_to(existing).parts
    for i, part in enumerate(new_parts):
        size, extra = len(os.fsencode(part)), (_work_name_extra(part) if i == len(new_parts) - 1 else 0)
        if size + extra > limit:
            shown = part if len(part) <= 40 else f"{part[:30]}...{part[-6:]}"
            why = f"the file system's {limit}, less {extra} for mitigate's work names" if extra else "the file system's"
            raise OutputError(f"output name '{shown}' is too long: {size} bytes, and here a name may have at most "
                              f"{limit - extra} ({why}); pick a shorter --out")


def _exists(path: Path) -> bool:
    """`path.exists()`, False for a name the file system cannot even look up (too long)."""
    try:
        return path.exists()
    except OSError:
        return False


def check_writable(out: str | Path) -> None:
    """Refuse an output under a file, with a name too long for the file system, or whose nearest
    existing folder cannot be written (checked by creating and removing a probe file, so read-only
    mounts are caught too)."""
    out = Path(out).absolute()
    for parent in out.parents:
        if _exists(parent):
            check_name_lengths(out, parent)
            if not parent.is_dir():
                raise OutputError(f"output '{out}' lies under '{parent}', which is a file, not a folder")
            try:
                fd, probe = tempfile.mkstemp(prefix=".mitigate-probe-", dir=parent)
            except OSError as e:
                raise OutputError(f"output '{out}': cannot write in '{parent}' ({e.strerror or e}); "
                                  "pick a writable place") from e
            os.close(fd)
            os.unlink(probe)
            return


def check_output_file(out: str | Path, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """The checks for a command that writes one file (e.g. `mitigate eval --out FILE.json`), before
    any work: not an input, not a folder, not an existing file unless `overwrite`, writable."""
    out = Path(out)
    check_not_input(out, inputs)
    check_writable(out)
    if out.exists() and (out.is_dir() or not overwrite):
        kind = "a folder" if out.is_dir() else "a file"
        raise OutputError(f"output '{out}' already exists ({kind}); pass --overwrite to replace a file, "
                          "or pick another path")
    return out


def check_output(out: str | Path, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """The checks of `run_folder` without creating anything (call before long work)."""
    out = Path(out)
    check_not_input(out, inputs)
    check_writable(out)
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
        follow_umask_tree(tmp)
        if out.exists():  # checked above: empty, or ours and overwrite was asked for
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- resumable runs

PARTIAL_SUFFIX = ".partial"
PARTIAL_MARKER = ".mitigate-partial"  # in OUT.partial while the run is unfinished
OWNER = ".owner"  # "pid host" of the process working in a folder
CHECKPOINTS = "checkpoints"  # resume checkpoints inside a partial folder (removed on success)


def partial_path(out: str | Path) -> Path:
    """The visible work folder of a resumable run: `OUT.partial` beside `OUT`."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def _owner(folder: Path) -> tuple[int | None, str | None]:
    try:
        pid, _, host = (folder / OWNER).read_text().strip().partition(" ")
        return int(pid), host or None
    except (OSError, ValueError):
        return None, None


def _owner_alive(folder: Path) -> int | None:
    """The pid of another live process working in `folder` on this host, else None."""
    pid, host = _owner(folder)
    if pid is None or pid == os.getpid() or (host and host != platform.node()):
        return None
    return pid if _pid_alive(pid) else None


def resumable_content(folder: str | Path) -> bool:
    """Whether a partial folder holds something a resume would reuse: a training checkpoint or a
    finished sub-run (at any depth)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any(p.is_dir() for p in folder.rglob(f"{CHECKPOINTS}/step-*")):
        return True
    return any(folder.rglob(MARKER))


@dataclass
class RunPlan:
    """What a resumable run command will do with its output (`plan_run`)."""

    out: Path
    work: Path  # OUT.partial
    status: str  # "new": start in a fresh work folder; "resume": continue in it; "complete": OUT is finished
    overwrite: bool = False
    discard: bool = False  # a stale work folder of ours to remove first (nothing to resume, or --overwrite)


def plan_run(out: str | Path, overwrite: bool = False, inputs: Iterable = (), resume: bool = False) -> RunPlan:
    """Every output check of a resumable run command, before any work; creates nothing.

    - `OUT` follows `check_output` (with `resume`, a finished `OUT` of ours is reported "complete").
    - `OUT.partial` must be ours (it holds `.mitigate-partial`) and not in use by a live process.
      With `resume` the run continues in it; without, it is refused when it holds something to
      resume from (unless `overwrite`), and replaced when it holds nothing (a run killed before its
      first checkpoint)."""
    out = Path(out)
    inputs = list(inputs)
    work = partial_path(out)
    check_not_input(work, inputs)
    if resume and out.is_dir() and (out / MARKER).is_file():
        check_not_input(out, inputs)
        return RunPlan(out, work, "complete")
    check_output(out, overwrite, inputs)
    if work.exists() or work.is_symlink():
        if not work.is_dir() or work.is_symlink() or not (work / PARTIAL_MARKER).is_file():
            raise OutputError(f"'{work}' exists and was not created by mitigate as the work folder of '{out}'; "
                              "move it away or pick another --out")
        pid = _owner_alive(work)
        if pid is not None:
            raise OutputError(f"another mitigate process (pid {pid}) is working in '{work}'; wait for it to "
                              "finish or stop it, then pass --resume")
        if resume:
            return RunPlan(out, work, "resume", overwrite)
        if resumable_content(work) and not overwrite:
            raise OutputError(f"'{work}' holds an unfinished run of '{out}'; pass --resume to continue it, or "
                              "--overwrite to discard it and start over")
        return RunPlan(out, work, "new", overwrite, discard=True)
    return RunPlan(out, work, "new", overwrite)


def _clean_leftovers(folder: Path) -> None:
    """Remove, at any depth, the temporaries of atomic writes (hidden names) that a killed attempt
    left in a finished work folder (all of it is this run's own)."""
    for p in sorted(folder.rglob(".*"), key=lambda p: len(p.parts)):
        if p.name in (PARTIAL_MARKER, OWNER, MARKER) or not os.path.lexists(p):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def resumable_run(plan: RunPlan) -> Iterator[Path]:
    """Yield the work folder `OUT.partial` of a planned run (`plan_run`); on success it becomes
    `OUT` (without its resume checkpoints). On failure it is kept when it holds something to
    resume from or existed before this command; otherwise (created here, nothing to resume) it is
    removed."""
    out, work = plan.out, plan.work
    if plan.status == "complete":
        raise ValueError("resumable_run: the run is complete, there is nothing to do")
    if plan.discard:
        why = "discarded by --overwrite" if resumable_content(work) else "it held nothing to resume"
        shutil.rmtree(work)
        print(f"mitigate: removed '{work}', the work folder of an earlier run of '{out}' ({why})", file=sys.stderr)
    created = not work.exists()
    if created:
        out.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        _follow_umask(work, directory=True)
        (work / PARTIAL_MARKER).write_text("unfinished mitigate run; continue it with the same command and "
                                           "--resume\n")
    (work / OWNER).write_text(f"{os.getpid()} {platform.node()}")
    try:
        yield work
    except BaseException as e:
        (work / OWNER).unlink(missing_ok=True)
        if created and not resumable_content(work):
            shutil.rmtree(work, ignore_errors=True)
        elif not getattr(e, "gives_resume_advice", False):  # an error that says itself how to go on
            print(f"mitigate: the unfinished run is kept in '{work}'; run the same command with --resume to "
                  "continue it", file=sys.stderr)
        raise
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    _clean_leftovers(work)  # temporaries of writes a killed earlier attempt left behind
    for name in (OWNER, PARTIAL_MARKER):
        (work / name).unlink(missing_ok=True)
    (work / MARKER).write_text("written by mitigate; `--overwrite` may replace this folder\n")
    follow_umask_tree(work)
    if out.exists():  # checked by plan_run: empty, or ours and overwrite was asked for
        shutil.rmtree(out)
    os.replace(work, out)


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
    try:
        yield tmp
        follow_umask_tree(tmp)  # the writers inside (safetensors) pick their own modes
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
    """Strict JSON (RFC 8259): a number that is not finite (NaN, an infinity) is written as `null`,
    since the bare `NaN` of `json.dumps` is rejected by strict parsers; `nan_for_null` reads it back."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        text = json.dumps(null_for_nonfinite(obj), indent=2, sort_keys=False, allow_nan=False)
    write_text(path, text + "\n")


def null_for_nonfinite(obj):
    """`obj` with every non-finite float replaced by None (JSON null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: null_for_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [null_for_nonfinite(v) for v in obj]
    return obj


NAN = float("nan")  # one object, as `json.loads` returns for every NaN: equal trees then compare equal


def nan_for_null(obj):
    """`obj` with every None read back as NaN: for trees of numbers that `write_json` wrote (metric
    rows, summaries), where null stands for a number that was not finite."""
    if obj is None:
        return NAN
    if isinstance(obj, dict):
        return {k: nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_for_null(v) for v in obj]
    return obj


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


def write_meta(folder: Path, config_yaml: str, seed: int, command: str, record: dict | None = None) -> None:
    """config.yaml and meta.json (seed, command, argv, git revision, versions, and `record`: the task,
    resolved config and overrides of the run)."""
    write_text(folder / "config.yaml", config_yaml)
    write_json(folder / "meta.json", {"seed": seed, "command": command, "argv": sys.argv, "git": git_revision(),
                                      "versions": versions(), **(record or {})})


def finite_json(obj):
    """`obj` with every non-finite float written as a string ("nan", "inf", "-inf"): strict JSON
    readers reject the bare NaN / Infinity that `json.dumps` writes by default."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


class MetricsLog:
    """Append-only JSONL of per-step scalars; every line is strict JSON (see `finite_json`).
    `mirror`: also called with every row (experiment trackers, `mitigate.core.tracking`)."""

    def __init__(self, path: Path, mirror=None):
        self.path = Path(path)
        self.mirror = mirror

    def log(self, row: dict) -> None:
        try:
            line = json.dumps(row, allow_nan=False)
        except ValueError:
            line = json.dumps(finite_json(row), allow_nan=False)
        new = not self.path.exists()
        with self.path.open("a") as f:
            f.write(line + "\n")
        if new:
            _follow_umask(self.path, directory=False)
        if self.mirror is not None:
            self.mirror(row)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def digest(self) -> str:
        """sha256 of the log so far (of nothing, before the first row)."""
        return sha256_file(self.path) if self.path.exists() else hashlib.sha256(b"").hexdigest()

    def truncate(self, size: int, sha256: str | None = None) -> None:
        """Cut the log back to its first `size` bytes (the rows a resume checkpoint covers), checking
        that they are the bytes the checkpoint recorded."""
        have = self.size()
        if have == size == 0:
            return
        if have < size:
            raise InputError(f"'{self.path}' holds {have} bytes, fewer than the {size} its resume checkpoint "
                             "recorded; it was changed or truncated after the checkpoint")
        with self.path.open("rb+") as f:
            head = f.read(size)
            if sha256 is not None and hashlib.sha256(head).hexdigest() != sha256:
                raise InputError(f"the first {size} bytes of '{self.path}' differ from those its resume checkpoint "
                                 "recorded; it was changed after the checkpoint")
            f.truncate(size)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, what: str = "file"):
    """Parse a JSON file; a missing, truncated or corrupt file is an `InputError` naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise InputError(f"{what} '{path}' is missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{what} '{path}' cannot be read ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} '{path}' is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                         "the file is truncated or corrupt") from e


def check_safetensors(path: str | Path) -> None:
    """A clear `InputError` for a safetensors file that is truncated or corrupt (its header is read
    and its tensor data checked against the file size), before any library parses it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file '{path}' is missing")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            raise InputError(f"'{path}' is truncated or not a safetensors file ({size} bytes; the header is "
                             "incomplete)")
        try:
            header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise InputError(f"'{path}' is corrupt: its safetensors header cannot be read ({e})") from e
    data, need = size - 8 - n, max(ends, default=0)
    if data != need:
        state = "truncated" if data < need else "corrupt"
        raise InputError(f"'{path}' is {state}: its header announces {need} bytes of tensor data, the file "
                         f"holds {data}")
