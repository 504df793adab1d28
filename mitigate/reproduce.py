"""`mitigate reproduce`: pretrain the base once, train every method for every seed with equal
budgets, evaluate all on ID and both OOD splits, and write summary.json / summary.md / plots."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.evaluate import demonstration_bias, eval_splits, evaluate_split, split_prompts
from mitigate.metrics import mean_metrics
from mitigate.runs import run_folder, write_json, write_text

SCALARS = ("distinct_correct", "concepts", "concept_entropy", "top_concept_share", "token_entropy")


def method_config(cfg: C.Config, method: str) -> C.Config:
    """The train config of one method: the preset's train section plus its method_configs entry.
    A method without an entry is an objective of that name with its default settings."""
    data = C.to_dict(cfg)
    entry = cfg.reproduce.method_configs.get(method)
    if entry is None:
        from mitigate import registry

        if method not in registry.names("objective"):
            allowed = ["base", *registry.names("objective"), *cfg.reproduce.method_configs]
            raise C.ConfigError(f"unknown method '{method}' in reproduce.methods; allowed: {', '.join(allowed)}")
        entry = {"train.objective": {"name": method}}
    for key, value in entry.items():  # replace (not merge): a new objective brings its own fields
        *path, last = key.split(".")
        node = data
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return C.build(C.Config, data)


def _eval_all(model, task, cfg, seed, quiet):
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    out = {}
    for key, split in eval_splits(cfg.eval).items():
        prompts = split_prompts(task, split, cfg.eval.max_prompts)
        out[key] = evaluate_split(model, task, prompts, cfg.eval.samples, cfg.eval.temperature, gen,
                                  cfg.eval.batch_size, desc=f"eval {split}", quiet=quiet)["rows"]
    return out


def hierarchical_ci(rows_by_seed: list[list[dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """95% intervals from a two-level bootstrap: resample seeds, then prompts within each seed."""
    import warnings

    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
    rng = np.random.default_rng(seed)
    keys = _flat_keys(rows_by_seed[0][0])
    arrays = [np.array([[_get(r, k) for k in keys] for r in rows], dtype=float) for rows in rows_by_seed]
    boots = np.empty((n_boot, len(keys)))
    for b in range(n_boot):
        picks = rng.integers(len(arrays), size=len(arrays))
        means = [np.nanmean(arrays[s][rng.integers(len(arrays[s]), size=len(arrays[s]))], 0) for s in picks]
        boots[b] = np.nanmean(means, 0)
    lo, hi = np.nanquantile(boots, 0.025, 0), np.nanquantile(boots, 0.975, 0)
    out: dict = {}
    for k, a, c in zip(keys, lo, hi):
        _set(out, k, [float(a), float(c)])
    return out


def _flat_keys(d, prefix=()):
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
    return keys


def _get(d, k):
    for p in k:
        d = d[p]
    return d


def _set(d, k, v):
    for p in k[:-1]:
        d = d.setdefault(p, {})
    d[k[-1]] = v


def summarize_method(per_seed_rows: dict[int, dict]) -> dict:
    """per_seed_rows: {seed: {"id": rows, "blocked": rows, "rare": rows}} -> summary entry."""
    seeds = sorted(per_seed_rows)

    def block(rows):
        m = mean_metrics(rows)
        return {"pass_at_k": m["pass_at_k"], **{k: m[k] for k in SCALARS}}

    per_seed = [{"seed": s, "id": block(per_seed_rows[s]["id"]),
                 "ood": {"blocked": {"pass_at_k": block(per_seed_rows[s]["blocked"])["pass_at_k"]},
                         "rare": {"pass_at_k": block(per_seed_rows[s]["rare"])["pass_at_k"]}}} for s in seeds]
    top = mean_metrics([{"id": p["id"], "ood": p["ood"]} for p in per_seed])
    ci_id = hierarchical_ci([[{"pass_at_k": r["pass_at_k"], **{k: r[k] for k in SCALARS}}
                              for r in per_seed_rows[s]["id"]] for s in seeds])
    ci_ood = {k: hierarchical_ci([[{"pass_at_k": r["pass_at_k"]} for r in per_seed_rows[s][k]] for s in seeds])
              for k in ("blocked", "rare")}
    return {"seeds": seeds, "id": top["id"], "ood": top["ood"], "ci95": {"id": ci_id, "ood": ci_ood},
            "per_seed": per_seed}


def reproduce(cfg: C.Config, out: Path, overwrite: bool = False, quiet: bool = False,
              base: str | Path | None = None) -> Path:
    """`base`: reuse this pretrained base (run or checkpoint folder) instead of pretraining one,
    e.g. for ablation sweeps that share the main comparison's base model."""
    from mitigate.policy import load_checkpoint, resolve_checkpoint
    from mitigate.pretrain import pretrain
    from mitigate.tasks import make_task

    methods = list(cfg.reproduce.methods)
    train_methods = [m for m in methods if m != "base"]
    method_cfgs = {m: method_config(cfg, m) for m in train_methods}  # validate before any work
    seeds = list(cfg.reproduce.seeds)
    task = make_task(cfg.task)
    if base is not None:
        base_ckpt = resolve_checkpoint(base)
        base_model, meta = load_checkpoint(base_ckpt)
        if meta.get("task") != C.to_dict(cfg.task):
            raise C.ConfigError(f"--base '{base}' was pretrained on other task parameters than this config's")
    t0 = time.time()
    stages = 1 + len(train_methods) * len(seeds)
    with run_folder(out, overwrite) as tmp:
        write_text(tmp / "config.yaml", C.dump(cfg))
        bar = tqdm(total=stages, desc="reproduce", unit="run", disable=quiet)
        if base is None:
            bar.set_postfix_str("pretrain base")
            base_ckpt = pretrain(cfg, tmp / "base", quiet=True) / "checkpoint"
            base_model, _ = load_checkpoint(base_ckpt)
        rows, bias = {}, None
        if "base" in methods:  # a sweep on a shared base may leave it out of its table
            rows["base"] = {cfg.seed: _eval_all(base_model, task, cfg, cfg.seed, quiet)}
            bias = demonstration_bias(base_model, task, split_prompts(task, cfg.eval.id_split, cfg.eval.max_prompts),
                                      seed=cfg.seed, batch_size=cfg.eval.batch_size, quiet=True)
        bar.update(1)
        for m in train_methods:
            from mitigate.train import train

            rows[m] = {}
            for s in seeds:
                bar.set_postfix_str(f"{m} seed {s}")
                mcfg = C.build(C.Config, C.merge(C.to_dict(method_cfgs[m]), {"seed": s}))
                run = train(mcfg, base_ckpt, tmp / f"{m}-seed{s}", quiet=True, method=m)
                model, _ = load_checkpoint(run)
                rows[m][s] = _eval_all(model, task, cfg, s, quiet)
                bar.update(1)
        bar.close()
        summary = {"preset": cfg.preset, "wall_seconds": round(time.time() - t0, 1),
                   "id_split": cfg.eval.id_split, "base_checkpoint": str(base) if base else "base/checkpoint",
                   "methods": {m: summarize_method(rows[m]) for m in methods if m in rows},
                   "budget": _budget(cfg, method_cfgs)}
        if bias is not None:
            summary["base_demo_bias"] = bias
        if len(summary["methods"]) > 1:
            from mitigate.ranking import plot_pareto, rank_methods

            summary["ranking"] = rank_methods(summary)
            plot_pareto(summary, tmp / "pareto.png")
        write_json(tmp / "summary.json", summary)
        from mitigate.report import write_report

        write_report(summary, tmp)
    return out


def _budget(cfg, method_cfgs) -> dict:
    t = cfg.train
    out = {"steps": t.steps, "prompts_per_step": t.prompts_per_step, "group_size": t.group_size, "lr": t.lr,
           "eval_samples": cfg.eval.samples, "pretrain_steps": cfg.pretrain.steps}
    out["objectives"] = {m: C.to_dict(c.train.objective) for m, c in method_cfgs.items()}
    out["regularizers"] = {m: [C.to_dict(r) for r in c.train.regularizers] for m, c in method_cfgs.items()}
    return out
