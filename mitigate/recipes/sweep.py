"""`mitigate sweep CONFIG`: a grid of settings x seeds from one config file, run by a local
process pool, resumable, each cell a normal run folder; then summary.json and summary.md.

The format is the one `reproduce` already reads, so every file under `baselines/ablations/` is a
sweep: `reproduce.methods` are the settings (each one's overrides in `reproduce.method_configs`;
a name without an entry is that registered objective at its defaults; `base` evaluates the base
model), `reproduce.seeds` the seeds. The cells are every setting x seed, `OUT/<setting>-seed<s>/`,
each a `mitigate train` run folder with its `eval.json` (the same evaluation stream as
`reproduce`, so a cell's numbers equal the same method and seed of a comparison on that base).

    OUT/sweep.json           the plan: config file, settings, seeds, the base, the varying parameters
    OUT/config.yaml          the resolved config (each cell's own is in its folder)
    OUT/base/                the base model (pretrained here unless --base gives one) and its eval.json
    OUT/<setting>-seed<s>/   one cell: config.yaml, metrics.jsonl, budget.json, checkpoint/, eval.json
    OUT/summary.json, .md    as `reproduce` writes them, plus a `sweep` block (written when every cell is done)

Resumable: a cell whose folder holds its checkpoint and eval.json, trained with the config this
sweep would use, is skipped; a half-finished cell (killed during training or before its
evaluation) is trained again from the start. A finished cell trained with other settings is an
error naming it (`overwrite` retrains it). Nothing is created before every input is checked.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.budget import Budget
from mitigate.core.io import (
    MARKER,
    OutputError,
    check_not_input,
    check_output,
    check_writable,
    write_json,
    write_text,
)
from mitigate.core.resume import fault_point
from mitigate.core.seeding import device_for
from mitigate.core.tracking import parse_report_to
from mitigate.metrics.ranking import rank_methods, saturated_columns
from mitigate.metrics.summary import summarize
from mitigate.policies import checkpoint_meta, load_policy, resolve_checkpoint
from mitigate.recipes.common import (
    cell_threads,
    check_decided_by_checkpoint,
    check_methods_share_the_base,
    default_jobs,
    run_in_pool,
)
from mitigate.recipes.evaluate import rows_from_record
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.reproduce import budget, evaluate_and_record, mean_budget, method_config
from mitigate.recipes.train import train
from mitigate.report import report_markdown
from mitigate.tasks import make_task

PLAN = "sweep.json"
BASE = "base"
NOT_COMPARED = ("reproduce",)  # sections that say which cells exist, not how one is trained


def cell_name(setting: str, seed: int) -> str:
    return f"{setting}-seed{seed}"


def _flat(tree, prefix: str = "") -> dict:
    """{"train.regularizers.0.coef": 0.1, ...}: every leaf of a resolved config, lists indexed."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def varying(method_cfgs: dict[str, C.Config]) -> dict[str, dict]:
    """{setting: {parameter: value}} for the parameters (config leaves, `reproduce.*` aside) whose
    values differ between the settings: the axes of the sweep's tables and figures. A parameter a
    setting lacks (e.g. a regularizer it does not use) is None there."""
    flat = {m: {k: v for k, v in _flat(C.to_dict(c)).items() if not k.startswith(NOT_COMPARED)}
            for m, c in method_cfgs.items()}
    keys = list(dict.fromkeys(k for f in flat.values() for k in f))
    diff = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    return {m: {k: flat[m].get(k) for k in diff} for m in method_cfgs}


def comparable(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in NOT_COMPARED}


def _saved_config(folder: Path) -> dict | None:
    try:
        data = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _first_difference(a: dict, b: dict) -> str:
    fa, fb = _flat(a), _flat(b)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k, "<absent>") != fb.get(k, "<absent>"):
            return f"{k}: {fa.get(k, '<absent>')!r} there, {fb.get(k, '<absent>')!r} now"
    return "nothing"


def cell_state(folder: Path, cfg: C.Config | None = None) -> str:
    """'done' (checkpoint and eval.json, trained with `cfg`), 'stale' (done, with another config),
    'partial' (the folder exists but is unfinished) or 'missing'."""
    if not folder.exists():
        return "missing"
    if folder.name == BASE:
        return "done" if (folder / "eval.json").is_file() else "partial"
    if not ((folder / "checkpoint" / "model.safetensors").is_file() and (folder / "eval.json").is_file()
            and (folder / "budget.json").is_file()):
        return "partial"
    if cfg is not None:
        saved = _saved_config(folder)
        if saved is None or comparable(saved) != comparable(C.to_dict(cfg)):
            return "stale"
    return "done"


class Sweep:
    """The checked plan of one sweep: settings, seeds, cells, base; nothing is written."""

    def __init__(self, cfg: C.Config, out: str | Path, base: str | Path | None = None, config_path: str = ""):
        self.cfg, self.out, self.config_path = cfg, Path(out), str(config_path)
        self.settings = list(dict.fromkeys(cfg.reproduce.methods))
        if len(self.settings) != len(cfg.reproduce.methods):
            raise C.ConfigError(f"reproduce.methods names a setting twice: {list(cfg.reproduce.methods)}")
        self.trained = [m for m in self.settings if m != BASE]
        if not self.trained:
            raise C.ConfigError("a sweep needs at least one setting to train in reproduce.methods (besides base)")
        for m in self.trained:
            if not m or m.startswith(".") or "/" in m or os.sep in m or m != m.strip():
                raise C.ConfigError(f"setting name {m!r} in reproduce.methods cannot name a folder; rename it")
        self.seeds = list(cfg.reproduce.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(isinstance(s, int) for s in self.seeds):
            raise C.ConfigError(f"reproduce.seeds must be distinct integers, got {self.seeds}")
        self.method_cfgs = {m: method_config(cfg, m) for m in self.trained}
        check_methods_share_the_base(cfg, self.method_cfgs, "reproduce.method_configs")
        self.cell_cfgs = {cell_name(m, s): C.with_overrides(self.method_cfgs[m], {"seed": s})
                          for m in self.trained for s in self.seeds}
        self.cells = {cell_name(m, s): (m, s) for m in self.trained for s in self.seeds}
        self.base_given = base is not None
        if base is not None:
            self.base_ckpt = resolve_checkpoint(base)
            meta = checkpoint_meta(self.base_ckpt)
            check_decided_by_checkpoint(meta, cfg, base)  # and so every cell's (checked above)
        else:
            self.base_ckpt = self.out / BASE / "checkpoint"
        self.base_arg = str(base) if base is not None else None
        self.base_eval_stale = False

    # ---- the record kept in OUT/sweep.json; a resumed sweep must match its base
    def plan(self) -> dict:
        return {"config": self.config_path, "base": self.base_arg, "settings": self.settings, "seeds": self.seeds,
                "overrides": {m: self.cfg.reproduce.method_configs.get(m, {"train.objective": {"name": m}})
                              for m in self.trained},
                "varying": varying(self.method_cfgs), "shared": comparable(C.to_dict(self.cfg))}

    def check_out(self, overwrite: bool) -> list[str]:
        """Refuse an OUT that is not this sweep's (or an earlier run of it); the cells to (re)train.
        Stale cells are an error unless `overwrite`."""
        out = self.out
        check_not_input(out, [self.base_arg] if self.base_arg else [])
        check_writable(out)  # under a file, a name too long, or not writable
        if out.exists() and not out.is_dir():
            raise OutputError(f"output '{out}' exists and is a file, not a sweep folder; pick another --out")
        if not out.exists() or not any(out.iterdir()):
            check_output(out)  # a file, or not writable
            return list(self.cells)
        if not (out / PLAN).is_file():
            raise OutputError(f"output folder '{out}' exists and is not a sweep folder (no {PLAN}); pick another --out")
        old = json.loads((out / PLAN).read_text())
        if old.get("base") != self.base_arg:
            raise OutputError(f"'{out}' is a sweep on base {old.get('base') or 'pretrained in it'}, not "
                              f"{self.base_arg or 'pretrained in it'}; use the same --base or another --out")
        if not self.base_given and (out / BASE / "checkpoint").exists():
            saved = _saved_config(out / BASE) or {}
            for key in ("seed", "task", "model", "pretrain"):
                if saved.get(key) != C.to_dict(self.cfg).get(key):
                    raise OutputError(f"the base model in '{out / BASE}' was pretrained with other {key} settings "
                                      f"({_first_difference({key: saved.get(key)}, {key: C.to_dict(self.cfg)[key]})}); "
                                      "use another --out")
        shared = old.get("shared", {})
        if (out / BASE / "eval.json").exists() and (shared.get("eval"), shared.get("seed")) != (
                C.to_dict(self.cfg.eval), self.cfg.seed):
            if not overwrite:
                raise OutputError(f"the base model of '{out}' was evaluated with other eval settings or seed; pass "
                                  "--overwrite to evaluate it again or pick another --out")
            self.base_eval_stale = True
        stale = [c for c in self.cells if cell_state(out / c, self.cell_cfgs[c]) == "stale"]
        if stale and not overwrite:
            why = _first_difference(comparable(_saved_config(out / stale[0]) or {}),
                                    comparable(C.to_dict(self.cell_cfgs[stale[0]])))
            raise OutputError(f"{len(stale)} finished cell(s) of '{out}' were trained with other settings "
                              f"({', '.join(stale[:4])}{' ...' if len(stale) > 4 else ''}; {stale[0]}: {why}); "
                              "pass --overwrite to retrain them or pick another --out")
        return [c for c in self.cells if cell_state(out / c, self.cell_cfgs[c]) != "done"]


def _job(cfg_dict: dict, base_ckpt: str, folder: str, method: str, eval_dict: dict, seed: int,
         report_to: str = "none") -> str:
    """Train one cell and evaluate it (in a worker process or in this one)."""
    cfg = C.from_dict(cfg_dict)
    folder = Path(folder)
    exists = folder.exists() or folder.with_name(folder.name + ".partial").exists()
    run = train(cfg, base_ckpt, folder, overwrite=exists, quiet=True, method=method, report_to=report_to)
    fault_point("sweep", folder.name)  # test hook: killed between a cell's training and its evaluation
    eval_cfg = C.build(C.EvalConfig, eval_dict)
    policy, _ = load_policy(run, device_for(cfg.device))
    evaluate_and_record(policy, make_task(cfg.task), eval_cfg, seed, run, quiet=True)
    return folder.name


def sweep(cfg: C.Config, out: str | Path, base: str | Path | None = None, jobs: int | None = None,
          overwrite: bool = False, quiet: bool = False, only: list[str] | None = None, imports: list[str] = (),
          config_path: str = "", report_to: str = "none") -> dict:
    """Run the missing cells of the sweep (all, or those named in `only`), then, once every cell is
    done, write summary.json and summary.md. Returns {"trained": [...], "skipped": [...],
    "summary": path or None}. `jobs`: worker processes (default: one per core), each cell on one
    torch thread; 1 runs the cells in this process. Everything here (the base too) runs on one torch
    thread, so no number depends on `jobs` or the machine's core count. `report_to`: experiment
    trackers of every run."""
    with cell_threads():
        return _sweep(cfg, out, base, jobs, overwrite, quiet, only, imports, config_path, report_to)


def _sweep(cfg: C.Config, out, base, jobs: int | None, overwrite: bool, quiet: bool, only, imports,
           config_path: str, report_to: str) -> dict:
    jobs = default_jobs(jobs, device_for(cfg.device).type)
    parse_report_to(report_to)
    sw = Sweep(cfg, out, base, config_path)
    unknown = [c for c in only or [] if c not in [*sw.cells, BASE]]
    if unknown:
        raise C.ConfigError(f"unknown cell(s) {', '.join(unknown)}; the cells of this sweep: "
                            f"{', '.join([BASE, *sw.cells])}")
    todo = sw.check_out(overwrite)
    out, base_ready = sw.out, sw.base_given or (sw.out / BASE / "checkpoint" / "model.safetensors").is_file()
    if only is not None:
        todo = [c for c in todo if c in only]
        if todo and not base_ready and BASE not in only:
            raise C.ConfigError(f"the base model of '{out}' is not pretrained yet; run the sweep with --cell {BASE} "
                                "first (--print-commands lists the order)")
    # ---- every input checked: from here on, files are written
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        write_text(out / MARKER, "written by mitigate (a sweep); `--overwrite` may replace this folder\n")
    write_json(out / PLAN, sw.plan())
    write_text(out / "config.yaml", C.dump(cfg))
    if not base_ready and (only is None or BASE in only):
        leftover = (out / BASE).exists() or (out / f"{BASE}.partial").exists()  # a killed pretraining: redo it
        pretrain(cfg, out / BASE, overwrite=leftover, quiet=quiet, report_to=report_to)
    if BASE in sw.settings and (only is None or BASE in only) and (sw.base_eval_stale or
                                                                     cell_state(out / BASE) != "done"):
        policy, _ = load_policy(sw.base_ckpt, device_for(cfg.device))
        evaluate_and_record(policy, make_task(cfg.task), cfg.eval, cfg.seed, out / BASE, quiet)
        if sw.base_given:
            write_json(out / BASE / "base.json", {"checkpoint": str(sw.base_ckpt)})
    skipped = [c for c in sw.cells if c not in todo and (only is None or c in only)]
    run_cells(sw, todo, jobs, quiet, list(imports), report_to)
    result = {"trained": todo, "skipped": skipped, "summary": None}
    if all(cell_state(out / c, sw.cell_cfgs[c]) == "done" for c in sw.cells) and \
            (BASE not in sw.settings or cell_state(out / BASE) == "done"):
        write_summary(sw)
        result["summary"] = out / "summary.json"
    return result


def run_cells(sw: Sweep, todo: list[str], jobs: int, quiet: bool, imports: list[str], report_to: str = "none") -> None:
    if not todo:
        return
    args = {c: (C.to_dict(sw.cell_cfgs[c]), str(sw.base_ckpt), str(sw.out / c), sw.cells[c][0],
                C.to_dict(sw.cfg.eval), sw.cells[c][1], report_to) for c in todo}
    bar = tqdm(total=len(todo), desc="sweep", unit="cell", disable=quiet, dynamic_ncols=True)
    try:
        if jobs == 1 or len(todo) == 1:
            for c in todo:
                bar.set_postfix_str(c)
                _job(*args[c])
                bar.update(1)
            return
        run_in_pool(_job, args, jobs, imports, bar, "mitigate sweep: cell {key} failed; the finished cells are kept, "
                    "run the same command again to finish the rest")
    finally:
        bar.close()


def write_summary(sw: Sweep) -> dict:
    """summary.json and summary.md over every cell, from the cells' eval.json files alone, so a
    resumed sweep writes the same bytes as an uninterrupted one."""
    cfg, out = sw.cfg, sw.out
    rows = {}
    for m in sw.settings:
        if m == BASE:
            rows[m] = {cfg.seed: rows_from_record(json.loads((out / BASE / "eval.json").read_text()))}
        else:
            rows[m] = {s: rows_from_record(json.loads((out / cell_name(m, s) / "eval.json").read_text()))
                       for s in sw.seeds}
    summary_rows, replicates = summarize(rows, cfg.reproduce.paired_against, cfg.reproduce.n_boot, cfg.seed)
    entries = {m: summary_rows[m] for m in sw.settings}
    for m in sw.trained:
        entries[m]["budget"] = mean_budget([out / cell_name(m, s) for s in sw.seeds])
    if BASE in entries:
        entries[BASE]["budget"] = Budget().to_dict()
    wall = sum(entries[m]["budget"]["wall_seconds"] * len(sw.seeds) for m in sw.trained)
    plan = sw.plan()
    summary = {"preset": cfg.preset, "wall_seconds": round(wall, 1), "id_split": cfg.eval.id_split,
               "base_checkpoint": sw.base_arg or f"{BASE}/checkpoint", "methods": entries,
               "budget": budget(cfg, sw.method_cfgs),
               "sweep": {"config": sw.config_path, "seeds": sw.seeds, "settings": sw.trained,
                         "overrides": plan["overrides"], "varying": plan["varying"],
                         "cells": list(sw.cells)}}
    if len(entries) > 1:
        summary["ranking"] = rank_methods({"methods": entries}, replicates)
        summary["not_ranked_saturated"] = saturated_columns({"methods": entries})
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", report_markdown(summary) + sweep_markdown(summary))
    return summary


def sweep_markdown(summary: dict) -> str:
    s = summary["sweep"]
    params = list(dict.fromkeys(k for v in s["varying"].values() for k in v))
    lines = ["", "## Sweep", "", f"Config `{s['config']}`: {len(s['settings'])} settings x {len(s['seeds'])} seeds "
             f"({', '.join(map(str, s['seeds']))}); wall time above is the cells' training time. LaTeX tables and "
             "figures: `python -m analysis paper <this folder> --out paper` (or `make paper RUNS=<this folder>`).",
             ""]
    if params:
        lines += ["| setting | " + " | ".join(params) + " |", "|---|" + "---|" * len(params)]
        for m in s["settings"]:
            lines.append(f"| {m} | " + " | ".join("" if s["varying"][m].get(p) is None else str(s["varying"][m][p])
                                                 for p in params) + " |")
        lines.append("")
    return "\n".join(lines)


def commands(sw: Sweep, argv_config: list[str]) -> list[str]:
    """One shell command per cell (`mitigate sweep ... --cell NAME --jobs 1`), for a cluster
    scheduler or `accelerate launch` users: the base first (pretrained once, and evaluated when it
    is a setting), then the cells in any order or in parallel, then the same sweep without --cell,
    which trains nothing once every cell is done and writes the tables."""
    head = ["mitigate", "sweep", *argv_config, "--out", str(sw.out)]
    lines = []
    if not sw.base_given or BASE in sw.settings:
        lines += ["# first: the base model (pretrained once; evaluated when base is a setting)",
                  shlex.join([*head, "--cell", BASE, "--jobs", "1"])]
    lines.append(f"# {len(sw.cells)} cells, independent of each other (any order, in parallel)")
    lines += [shlex.join([*head, "--cell", c, "--jobs", "1"]) for c in sw.cells]
    lines += ["# last: summary.json and summary.md (trains nothing once every cell is done)", shlex.join(head)]
    return lines


def print_commands(sw: Sweep, argv_config: list[str]) -> None:
    for line in commands(sw, argv_config):
        print(line)
