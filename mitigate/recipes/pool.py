"""`mitigate table --pool-tasks`: one comparison run on several task seeds (each its own graph,
splits and base model), pooled with a third bootstrap level over task seeds. The folders may
compare different lists of methods (e.g. the full comparison on one task seed, base/GRPO/SDSD on
the others); the methods every folder has are pooled.

Within a task seed the crossed bootstrap resamples prompts (shared by every method and seed) and
training seeds, exactly as `reproduce` does; `statistics.pool_task_replicates` then resamples the
task seeds themselves, so the pooled interval carries the task-to-task variation that a single
task's interval is conditional on. The pooled estimate is the mean over task seeds of the per-task
estimates; every method keeps its per-task results beside the pooled one (`per_task`). The ratio
test and the primary endpoints (of the first folder's `reproduce.primary`) are recomputed from the
pooled replicates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mitigate.core.fields import ConfigError
from mitigate.core.io import read_json, run_folder, write_json
from mitigate.metrics.primary import check_endpoints, primary_block
from mitigate.metrics.statistics import percentile_interval, pool_task_replicates
from mitigate.metrics.summary import ratio_block, split_block, summarize, tree
from mitigate.recipes.evaluate import rows_from_record
from mitigate.recipes.reproduce import eval_folder, with_strata
from mitigate.report import read_summary, write_report


def run_rows(folder: Path, summary: dict) -> dict:
    """rows[method][seed][split] of a finished reproduce folder, read from its eval.json files (the
    base, the sharpening rows under base/temperature-T, every method-seedS run)."""
    rows = {}
    for name, m in summary["methods"].items():
        paths = {s: eval_folder(folder, name, s) / "eval.json" for s in m["seeds"]}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ConfigError(f"'{folder}' lacks the evaluation rows {', '.join(missing)}: pooling needs the "
                              "reproduce folders themselves, with every run's eval.json")
        rows[name] = {s: rows_from_record(read_json(p, "evaluation")) for s, p in paths.items()}
    return rows


def comparable(cfg: dict) -> dict:
    """A comparison's resolved config without what may differ between pooled folders: the task seed
    and the lists of compared methods (the pool keeps the methods every folder has)."""
    out = {k: v for k, v in cfg.items() if k != "task"}
    out["task"] = {k: v for k, v in cfg["task"].items() if k != "seed"}
    out["reproduce"] = {k: v for k, v in cfg.get("reproduce", {}).items() if k not in ("methods", "tradeoff_methods")}
    return out


def pooled_summary(folders: list[str | Path], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The pooled summary of reproduce folders that differ only in the task seed."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ConfigError("--pool-tasks needs at least two reproduce folders (one per task seed)")
    summaries = [read_summary(f) for f in folders]
    configs = [yaml.safe_load((f / "config.yaml").read_text()) if (f / "config.yaml").is_file() else None
               for f in folders]
    if any(c is None for c in configs):
        raise ConfigError("--pool-tasks reads each folder's config.yaml: give reproduce output folders")
    task_seeds = [c["task"].get("seed", 0) for c in configs]
    if len(set(task_seeds)) != len(task_seeds):
        raise ConfigError(f"--pool-tasks pools different task seeds; these folders have task seeds {task_seeds}")
    for f, c in zip(folders[1:], configs[1:]):
        if comparable(c) != comparable(configs[0]):
            raise ConfigError(f"'{f}' was run with other settings than '{folders[0]}' (beyond task.seed and which "
                              "methods were compared): only those may differ between pooled folders")
    shared = [m for m in summaries[0]["methods"] if all(m in s["methods"] for s in summaries[1:])]
    if not shared:
        raise ConfigError("the pooled folders have no method in common")
    paired_against = configs[0].get("reproduce", {}).get("paired_against", ["grpo", "sdsd"])
    per_task, entries_of = [], []
    strata = list(summaries[0].get("strata", {}))
    for i, (f, s) in enumerate(zip(folders, summaries)):
        rows = run_rows(f, {**s, "methods": {m: s["methods"][m] for m in shared}})
        with_strata(rows, {name: v["prompts"] for name, v in s.get("strata", {}).items()})
        entries, stats = summarize(rows, paired_against, n_boot, seed + i, level, strata=strata)
        per_task.append(stats)
        entries_of.append(entries)
    methods = list(entries_of[0])
    splits = list(per_task[0]["keys"])
    keys = per_task[0]["keys"]
    if any(t["keys"] != keys or list(e) != methods for t, e in zip(per_task, entries_of)):
        raise ConfigError("the pooled folders measured different methods or metrics")
    pooled = {"keys": keys, "replicates": {}, "estimates": {}}
    for j, split in enumerate(splits):
        pooled["replicates"][split] = pool_task_replicates([t["replicates"][split] for t in per_task], n_boot,
                                                           [seed, 3, j])
        pooled["estimates"][split] = {m: np.mean([t["estimates"][split][m] for t in per_task], 0) for m in methods}
    out_methods = {}
    for m in methods:
        est = {s: pooled["estimates"][s][m] for s in splits}
        ci = {s: percentile_interval(pooled["replicates"][s][m], level) for s in splits}
        entry = {"seeds": entries_of[0][m]["seeds"], "task_seeds": task_seeds,
                 **split_block({s: tree(keys[s], est[s].tolist()) for s in splits}, strata),
                 "ci95": split_block({s: tree(keys[s], ci[s].tolist()) for s in splits}, strata), "paired": {}}
        for ref in paired_against:
            if ref in methods and ref != m:
                entry["paired"][ref] = split_block({s: tree(keys[s], [
                    {"mean": float(d), "ci95": c} for d, c in zip(
                        est[s] - pooled["estimates"][s][ref],
                        percentile_interval(pooled["replicates"][s][m] - pooled["replicates"][s][ref],
                                            level).tolist())])
                    for s in splits}, strata)
        entry["per_task"] = [{"task_seed": t, "id": e[m]["id"], "ood": e[m]["ood"], "ci95": e[m]["ci95"],
                              **({"strata": e[m]["strata"]} if strata else {}),
                              "paired": e[m].get("paired", {})} for t, e in zip(task_seeds, entries_of)]
        out_methods[m] = entry
    summary = {"preset": summaries[0]["preset"], "pooled_task_seeds": task_seeds,
               "sources": [str(f) for f in folders], "pooled_methods": shared,
               "wall_seconds": float(sum(s["wall_seconds"] for s in summaries)),
               "id_split": summaries[0].get("id_split", "id_test"), "diversity_r": summaries[0].get("diversity_r"),
               "methods": out_methods, "budget": summaries[0].get("budget", {})}
    ratio = ratio_block(pooled, methods, paired_against, level=level)
    if ratio:
        summary["ratio_test"] = {"methods": ratio, "n_prompts": sum(s["ratio_test"]["n_prompts"] for s in summaries),
                                 "n_pairs": sum(s["ratio_test"]["n_pairs"] for s in summaries),
                                 "per_task": [s["ratio_test"] for s in summaries]}
    endpoints = configs[0].get("reproduce", {}).get("primary") or []
    if endpoints:
        try:
            checked = check_endpoints(endpoints, methods, splits)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        summary["primary"] = {**primary_block(checked, pooled, configs[0]["reproduce"].get("alpha", 0.05), level),
                              "per_task": [s.get("primary") for s in summaries]}
    return summary


def write_pooled(folders: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """`mitigate table --pool-tasks DIR... --out OUT`: summary.json and summary.md of the pooled
    comparison (same output rules as every command)."""
    with run_folder(out, overwrite, inputs=folders) as tmp:
        summary = pooled_summary(folders)
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return Path(out)
