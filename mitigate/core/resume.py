"""Resume checkpoints: everything a training loop needs to continue bit for bit on CPU.

A run working in `OUT.partial` (`core.io.resumable_run`) writes every `save_every` steps

    OUT.partial/checkpoints/step-NNNNNN/
      state.json             the record: format, kind, step, resolved config, package versions, the
                             loop's counters, the optimizer's param groups, sha256 of every file
      model.safetensors      the trained module (`safetensors.torch.save_model`: exact dtypes, tied
                             weights once)
      <name>.safetensors     other modules that change during the run (an EMA teacher)
      optimizer.safetensors  the optimizer's per-parameter tensors
      rank-R.safetensors     process R's torch generators (named streams and the global one) and the
                             tensors of its stateful objective/regularizer terms
      rank-R.json            process R's numpy and python global RNG states and its terms' records
      checkpoint/            the policy's own checkpoint: `mitigate eval --ckpt` loads it

Tensors are safetensors, everything else JSON; nothing is pickled. A checkpoint is written into
`checkpoints/.step-NNNNNN.tmp` and renamed into place, and only then are older ones removed, so
the last good checkpoint survives a kill at any moment. Restoring checks every file's hash and
the run's identity (`check_same_run`): a restore that cannot be exact (a different config,
package version, process count or base checkpoint; a missing random state) is a `ResumeError`
saying what differs, never a best effort.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from mitigate.core.io import (
    CHECKPOINTS,
    InputError,
    check_safetensors,
    follow_umask_tree,
    read_json,
    sha256_file,
    write_json,
)

FORMAT = 1
# keys that may change on resume: they change nothing up to the resume point
RESUME_MUTABLE = frozenset({"train.save_every", "pretrain.save_every", "train.on_nonfinite",
                            "pretrain.on_nonfinite"})


class ResumeError(ValueError):
    """A resume that cannot be exact; the message says what differs."""


# ----------------------------------------------------------------------------- identity checks

def differences(old, new, path: str = "") -> list[str]:
    """'key: old -> new' for every leaf where two JSON-like trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            key = f"{path}.{k}" if path else str(k)
            if k not in new:
                out.append(f"{key}: {old[k]!r} -> (absent)")
            elif k not in old:
                out.append(f"{key}: (absent) -> {new[k]!r}")
            else:
                out += differences(old[k], new[k], key)
        return out
    if old != new or type(old) is not type(new):
        if isinstance(old, (int, float)) and isinstance(new, (int, float)) and old == new \
                and not isinstance(old, bool) and not isinstance(new, bool):
            return []
        return [f"{path}: {old!r} -> {new!r}"]
    return []


# Identity entries that are digests of something else: a change is said in words (the setting
# behind it is named by the config's own difference), not as two raw hashes.
DIGESTS = {"prompt_order": "the prompt order changed (it follows from train.steps, train.prompts_per_step, the "
                           "training prompts and the seed)",
           "init": "the input checkpoint changed (its files' sha256 differ from those the run started from: {keys})"}


def check_same_run(record: dict, expected: dict, where: Path) -> None:
    """Refuse a resume whose checkpoint `record` was not made by this very run: every key of
    `expected` must match (`config` up to `RESUME_MUTABLE`). The message names each differing
    setting; a digest that differs (`DIGESTS`) is described, its hashes left out."""
    problems = []
    for key, want in sorted(expected.items(), key=lambda kv: kv[0] != "config"):  # the settings first
        if key not in record:
            problems.append(f"the checkpoint records no '{key}'")
            continue
        diff = [d.removeprefix(f"{key}.") for d in differences(record[key], want, key)]  # a leaf: 'key: a -> b'
        if key == "config":
            diff = [d for d in diff if d.split(":")[0] not in RESUME_MUTABLE]
        if diff and key in DIGESTS:
            changed = sorted({d.split(":")[0] for d in diff})
            problems.append(DIGESTS[key].format(keys=", ".join(changed)))
        elif diff:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            problems.append(f"{key} changed ({shown})")
    if problems:
        raise ResumeError(f"cannot resume '{where}' exactly: {'; '.join(problems)}. Resume with the original "
                          "command and environment, or start over with --overwrite")


# ----------------------------------------------------------------------------- random states

def rng_state(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, record) of the named generators and the global torch, CUDA, numpy and python RNGs."""
    tensors = {f"generator.{k}": g.get_state() for k, g in generators.items()}
    tensors["global.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"global.cuda.{i}"] = s
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    tensors["global.numpy.key"] = torch.from_numpy(key.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    record = {"generators": sorted(generators), "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
              "python": [version, list(internal), gauss_next]}
    return tensors, record


def set_rng_state(generators: dict[str, torch.Generator], tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Restore what `rng_state` saved; a missing or extra stream is a `ResumeError`."""
    saved = set(record.get("generators", []))
    if saved != set(generators):
        raise ResumeError(f"the checkpoint's random streams ({', '.join(sorted(saved)) or 'none'}) differ from this "
                          f"run's ({', '.join(sorted(generators))})")
    needed = [f"generator.{k}" for k in generators] + ["global.torch", "global.numpy.key"]
    missing = [k for k in needed if k not in tensors] + [k for k in ("numpy", "python") if k not in record]
    if missing:
        raise ResumeError(f"the checkpoint lacks the random state {', '.join(missing)}; a resume could not be exact")
    for k, g in generators.items():
        g.set_state(tensors[f"generator.{k}"])
    torch.set_rng_state(tensors["global.torch"])
    cuda = sorted(k for k in tensors if k.startswith("global.cuda."))
    if cuda:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
            raise ResumeError(f"the checkpoint holds the random state of {len(cuda)} CUDA device(s); this process "
                              "sees fewer")
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = record["numpy"]
    np.random.set_state((kind, tensors["global.numpy.key"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = record["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------- optimizer

def optimizer_state(opt) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, record) of a torch optimizer: per-parameter tensors flattened by index, the param
    groups (and any non-tensor per-parameter value) as JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(opt, tensors: dict[str, torch.Tensor], record: dict) -> None:
    fresh = opt.state_dict()["param_groups"]
    groups = record["param_groups"]
    if len(groups) != len(fresh) or any(len(g["params"]) != len(f["params"]) for g, f in zip(groups, fresh)):
        raise ResumeError("the checkpoint's optimizer holds other parameter groups than this run's model")
    groups = [{k: (tuple(v) if isinstance(f.get(k), tuple) else v) for k, v in g.items()}
              for g, f in zip(groups, fresh)]
    state: dict = {}
    for name, t in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for name, v in record["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- stateful terms

def term_state(terms: list[tuple[str, object]], prompts: list) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, record) of the objective/regularizer terms that keep state across steps (those
    registered as classes). A term offering `state_dict(prompts)` (-> {name: array or tensor}) is
    saved; one without is recorded as not resumable, and a resume refuses it (`restore_terms`)."""
    tensors, record = {}, {}
    for label, term in terms:
        if not _stateful(term):
            continue
        name = type(term).__name__
        if not callable(getattr(term, "state_dict", None)) or not callable(getattr(term, "load_state_dict", None)):
            record[label] = {"class": name, "resumable": False}
            continue
        keys = []
        for k, v in term.state_dict(prompts).items():
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.detach().cpu()
            tensors[f"{label}/{k}"] = t.contiguous()
            keys.append([k, "numpy" if isinstance(v, np.ndarray) else "torch"])
        record[label] = {"class": name, "resumable": True, "keys": keys}
    return tensors, record


def restore_terms(terms: list[tuple[str, object]], prompts: list, tensors: dict, record: dict) -> None:
    for label, term in terms:
        if not _stateful(term):
            continue
        entry = record.get(label)
        name = type(term).__name__
        if entry is None or entry.get("class") != name:
            raise ResumeError(f"the checkpoint holds no state for {label} ({name}); a resume could not be exact")
        if not entry["resumable"]:
            raise ResumeError(f"{label} ({name}) keeps state across steps but offers no state_dict(prompts) / "
                              "load_state_dict(state, prompts), so a resume could not be exact; start over with "
                              "--overwrite, or give the term those two methods")
        state = {}
        for k, kind in entry["keys"]:
            t = tensors[f"{label}/{k}"]
            state[k] = t.numpy() if kind == "numpy" else t
        term.load_state_dict(state, prompts)


def _stateful(term) -> bool:
    """Registered functions are stateless; a registered class is instantiated once per run and may
    keep state across steps."""
    return not isinstance(term, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                                 functools.partial))


# ----------------------------------------------------------------------------- checkpoint folders

def step_name(step: int) -> str:
    return f"step-{step:06d}"


class Checkpoints:
    """The resume checkpoints of one run folder. `rank`, `world`, `barrier`: the processes of a
    multi-process run, which each write their own `rank-R.*` files into one checkpoint."""

    def __init__(self, run: str | Path, rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None):
        self.folder = Path(run) / CHECKPOINTS
        self.rank, self.world, self.barrier = rank, world, barrier

    def latest(self) -> Path | None:
        steps = sorted(p for p in self.folder.glob("step-*") if p.is_dir()) if self.folder.is_dir() else []
        return steps[-1] if steps else None

    def describe_latest(self) -> str | None:
        """'N, in PATH' for the newest checkpoint (messages), None when there is none."""
        latest = self.latest()
        return f"{int(latest.name.split('-')[1])}, in '{latest}'" if latest is not None else None

    def save(self, step: int, record: dict, modules: dict[str, torch.nn.Module], optimizer,
             rank_tensors: dict[str, torch.Tensor], rank_record: dict,
             write_policy: Callable[[Path], object] | None = None,
             fault: Callable[[], None] = lambda: None) -> Path:
        """Write checkpoint `step` (every process calls this; process 0 assembles and renames)."""
        main = self.rank == 0
        final = self.folder / step_name(step)
        staging = self.folder / f".{step_name(step)}.tmp"
        if main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.barrier()
        save_file(rank_tensors, staging / f"rank-{self.rank}.safetensors")
        write_json(staging / f"rank-{self.rank}.json", rank_record)
        self.barrier()
        if main:
            for name, module in modules.items():
                save_model(module, str(staging / f"{name}.safetensors"))
            fault()
            if optimizer is not None:
                tensors, opt_record = optimizer_state(optimizer)
                save_file(tensors, staging / "optimizer.safetensors")
                record = {**record, "optimizer": opt_record}
            if write_policy is not None:
                write_policy(staging / "checkpoint")
            files = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()}
            write_json(staging / "state.json", {"format": FORMAT, "step": step, "world": self.world,
                                                "modules": sorted(modules), **record, "files": files})
            follow_umask_tree(staging)  # safetensors writes 0600: a colleague may resume or evaluate it
            if final.exists():  # the same step written again (a resumed run that reached it twice)
                shutil.rmtree(final)
            os.replace(staging, final)
            for old in self.folder.glob("step-*"):
                if old != final and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def load(self, path: Path) -> Restored:
        """Read and verify checkpoint `path` (state.json, every file's hash, safetensors headers)."""
        state = read_json(path / "state.json", "resume checkpoint record")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else None
            raise ResumeError(f"'{path / 'state.json'}' is not a resume checkpoint of format {FORMAT} "
                              f"(found {found!r})")
        if state.get("world") != self.world:
            raise ResumeError(f"'{path}' was written by {state.get('world')} process(es); this run has {self.world}")
        for name, digest in state.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise InputError(f"resume checkpoint '{path}' is incomplete: '{name}' is missing")
            if f.suffix == ".safetensors":
                check_safetensors(f)
            if sha256_file(f) != digest:
                raise InputError(f"resume checkpoint file '{f}' is corrupt (its sha256 differs from the one recorded "
                                 "in state.json)")
        for name in (f"rank-{self.rank}.safetensors", f"rank-{self.rank}.json"):
            if name not in state.get("files", {}):
                raise ResumeError(f"resume checkpoint '{path}' holds no '{name}' (this process's random state)")
        return Restored(path, state, self.rank)


class Restored:
    """A verified checkpoint: its record and the restore steps."""

    def __init__(self, path: Path, state: dict, rank: int):
        self.path, self.state, self.rank = path, state, rank
        self.step = int(state["step"])
        self.rank_tensors = load_file(path / f"rank-{rank}.safetensors")
        self.rank_record = read_json(path / f"rank-{rank}.json", "resume checkpoint record")

    def restore_module(self, name: str, module: torch.nn.Module) -> None:
        if name not in self.state.get("modules", []):
            raise ResumeError(f"resume checkpoint '{self.path}' holds no '{name}' weights")
        missing, unexpected = load_model(module, str(self.path / f"{name}.safetensors"), strict=False)
        if missing or unexpected:
            raise ResumeError(f"the '{name}' weights in '{self.path}' do not fit this run's model (missing: "
                              f"{sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})")

    def restore_optimizer(self, opt) -> None:
        if "optimizer" not in self.state:
            raise ResumeError(f"resume checkpoint '{self.path}' holds no optimizer state")
        load_optimizer_state(opt, load_file(self.path / "optimizer.safetensors"), self.state["optimizer"])

    def restore_rng(self, generators: dict[str, torch.Generator]) -> None:
        set_rng_state(generators, self.rank_tensors, self.rank_record.get("rng", {}))

    def restore_terms(self, terms: list[tuple[str, object]], prompts: list) -> None:
        restore_terms(terms, prompts, self.rank_tensors, self.rank_record.get("terms", {}))


# ----------------------------------------------------------------------------- test hook

FAULT_ENV = "MITIGATE_FAULT"


def fault_point(where: str, step) -> None:
    """Test hook at the loops' kill points (`train:STEP` before a step, `pretrain:STEP`,
    `checkpoint:STEP` halfway through writing a checkpoint, `reproduce:RUN` before a run of the
    comparison, `sweep:CELL` between a sweep cell's training and its evaluation): with
    MITIGATE_FAULT=WHERE:STEP in the environment the process kills itself with SIGKILL there, so no
    cleanup runs, as when a job is preempted. Tests may also replace it."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
