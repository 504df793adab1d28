"""What the recipes share: the record stored beside every checkpoint and in every run's meta.json,
the task match check, and the resume helpers every resumable command (and a sweep over them)
uses: `finished_run` for a finished output met by `--resume`, `init_digest` for the identity of an
input checkpoint, `note_resume` for the run's provenance."""

from __future__ import annotations

import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml

from mitigate import config as C
from mitigate import plugins
from mitigate.core.io import InputError, read_json, sha256_file, write_json
from mitigate.core.registry import plugin_hint
from mitigate.core.resume import RESUME_MUTABLE, ResumeError, differences
from mitigate.objectives.external import check_teacher, external_record

# One torch thread per training run, in this process or a worker: a run's numbers then do not
# depend on --jobs or on the machine's core count (CPU float reductions change with the thread count).
CELL_THREADS = 1


@contextmanager
def cell_threads():
    """Torch on `CELL_THREADS` threads inside the block (this process's setting restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(CELL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_jobs(jobs: int | None, device: str) -> int:
    """`--jobs` of reproduce and sweep: given, or one worker per core on the CPU (one process on an
    accelerator, which the runs would otherwise share)."""
    if jobs is None:
        return (os.cpu_count() or 1) if device == "cpu" else 1
    if jobs < 1:
        raise C.ConfigError(f"--jobs must be at least 1 (worker processes), got {jobs}")
    return jobs


def init_worker(imports: list[str], threads: int) -> None:
    """A spawned worker of reproduce or sweep: quiet offline libraries, the pinned thread count, and
    the user's registrations (`--import`) that its runs may name."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    for spec in imports:
        plugins.import_plugin(spec)


def run_in_pool(job, args: dict, jobs: int, imports: list[str], bar, failed: str) -> None:
    """`job(*args[key])` for every key in a pool of `jobs` spawned workers (`init_worker`: one
    torch thread each), ticking `bar` as each one finishes. A failure cancels what has not started,
    prints `failed` (with `{key}`: the runs that failed) and raises; what finished stays on disk."""
    with ProcessPoolExecutor(max_workers=min(jobs, len(args)), mp_context=get_context("spawn"),
                             initializer=init_worker, initargs=(list(imports), CELL_THREADS)) as pool:
        futures = {pool.submit(job, *a): key for key, a in args.items()}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            broken = [f for f in done if f.exception() is not None]
            for f in done:
                if f.exception() is None:
                    bar.set_postfix_str(str(f.result()))
                    bar.update(1)
            if broken:  # a worker that dies (SIGKILL, out of memory) fails every run it shared the pool with
                for p in pending:
                    p.cancel()
                broken += [f for f in wait(pending, timeout=10).done if not f.cancelled() and f.exception() is not None]
                print(failed.format(key=", ".join(str(futures[f]) for f in broken)), file=sys.stderr)
                raise broken[0].exception()


def checkpoint_record(cfg: C.Config, method: str, policy) -> dict:
    """Stored as the checkpoint's mitigate.json: enough to rebuild its task and evaluate it."""
    n_params = sum(p.numel() for p in policy.model.parameters())
    return {"method": method, "n_params": n_params, "task": C.to_dict(cfg.task), "config": C.to_dict(cfg)}


def run_record(cfg: C.Config) -> dict:
    """What every run's meta.json records besides seed, command and versions: the task, the resolved
    config and the `--set` overrides it was resolved with (None when built in Python); with an
    external teacher (`train.objective.teacher: external`), that teacher's identity (`external_teacher`),
    checked against the task and model first: a run with an incompatible one is refused here, before
    any training (ConfigError, exit 2)."""
    record = {"task": C.to_dict(cfg.task), "config": C.to_dict(cfg), "overrides": getattr(cfg, "_overrides", None)}
    teacher = external_teacher(cfg)
    if teacher is not None:
        record["external_teacher"] = teacher
    return record


def external_teacher(cfg: C.Config, record: bool = True) -> dict | None:
    """The checked record of the config's external teacher (`objectives.external.external_record`; with
    `record` False only checked, no file hashed), or None when its objective has no external teacher."""
    objective = cfg.train.objective
    if getattr(objective, "teacher", None) != "external":
        return None
    if not record:
        check_teacher(objective.teacher_path, C.to_dict(cfg.task), C.to_dict(cfg.model))
        return {}
    return external_record(objective.teacher_path, C.to_dict(cfg.task), C.to_dict(cfg.model))


# The config sections a checkpoint decides: its task (prompts, vocabulary) and its model (name,
# shape, and every policy setting, which `load` takes from the checkpoint's record).
CHECKPOINT_SECTIONS = ("task", "model")


def checkpoint_settings(meta: dict) -> dict:
    """The sections a checkpoint decides, as its record (`checkpoint_record`) holds them, with the
    current defaults filled in (a record from before a field existed, or before the task registry:
    a graph task)."""
    recorded = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    task = {"name": "graph", **(meta.get("task") or recorded.get("task") or {})}
    out = {"task": task}
    if isinstance(recorded.get("model"), dict):
        out["model"] = recorded["model"]
    try:
        built = C.build(C.Config, {**out, "preset": recorded.get("preset", "default")})
    except C.ConfigError as e:
        raise C.ConfigError(f"the checkpoint records settings this version cannot build: {e}"
                            + plugin_hint(e)) from e
    return {k: C.to_dict(getattr(built, k)) for k in out}


def check_decided_by_checkpoint(meta: dict, cfg: C.Config, ckpt) -> None:
    """Refuse a config whose task or model differs from the checkpoint's: the run would use the
    checkpoint's and record the config's, a record that does not match what ran. The message
    names every differing key."""
    recorded = checkpoint_settings(meta)
    diff = [f"{section}.{d}" for section in recorded
            for d in differences(recorded[section], C.to_dict(getattr(cfg, section)))]
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise C.ConfigError(f"the config would change the task or model that the checkpoint '{ckpt}' decides "
                            f"({shown}): a model keeps its own task and architecture, so drop these task.* / model.* "
                            "overrides (another model needs its own base: `mitigate pretrain`)")


def check_methods_share_the_base(cfg: C.Config, method_cfgs: dict[str, C.Config], where: str) -> None:
    """Refuse a method whose task or model differs from `cfg`'s: every method of a comparison or
    sweep trains from the one base, so its run would record a model it did not train."""
    for m, c in method_cfgs.items():
        diff = [f"{s}.{d}" for s in CHECKPOINT_SECTIONS
                for d in differences(C.to_dict(getattr(cfg, s)), C.to_dict(getattr(c, s)))]
        if diff:
            raise C.ConfigError(f"{where}.{m} changes what the shared base model decides ({'; '.join(diff[:8])}); "
                                "methods of one comparison share the base's task and model")


def config_differences(saved: dict, cfg: C.Config) -> list[str]:
    """'key: old -> new' for every setting of `cfg` that differs from a saved resolved config,
    leaving out the settings a resume may change (`core.resume.RESUME_MUTABLE`)."""
    return [d for d in differences(saved, C.to_dict(cfg)) if d.split(":")[0] not in RESUME_MUTABLE]


def saved_config(folder: Path) -> dict:
    """The resolved config a run folder recorded (config.yaml)."""
    path = Path(folder) / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"'{path}' cannot be read as YAML ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"'{path}' does not hold a resolved config")
    return data


def check_same_config(folder: Path, cfg: C.Config) -> None:
    diff = config_differences(saved_config(folder), cfg)
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise ResumeError(f"cannot resume '{folder}': it was run with another config ({shown}). Resume with the "
                          "original settings, or start over with --overwrite")


def finished_run(out: Path, cfg: C.Config, quiet: bool = False) -> Path:
    """A finished run folder met by `--resume`: nothing to do when its config is this one, an error
    saying what differs otherwise."""
    check_same_config(out, cfg)
    if not quiet:
        print(f"mitigate: '{out}' is already complete; nothing to resume", file=sys.stderr)
    return Path(out)


def init_digest(ckpt: Path) -> dict:
    """sha256 of every file of an input checkpoint: a resume must start from the same one."""
    return {p.name: sha256_file(p) for p in sorted(Path(ckpt).iterdir()) if p.is_file()}


def note_resume(folder: Path, step: int | None = None) -> None:
    """Append this invocation to the run's meta.json (`resumed`: step and argv)."""
    path = Path(folder) / "meta.json"
    meta = read_json(path, "run record") if path.is_file() else {}
    meta.setdefault("resumed", []).append({"step": step, "argv": sys.argv})
    write_json(path, meta)
