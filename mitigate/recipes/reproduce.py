"""`mitigate reproduce`: pretrain the base once, train every method for every seed with equal
budgets, evaluate all on the ID split and the task's OOD splits, and write summary.json and
summary.md (figures: `python -m analysis figures OUT`)."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.core.io import check_output, run_folder, write_json, write_text
from mitigate.core.seeding import torch_stream
from mitigate.metrics import hierarchical_ci, mean_metrics
from mitigate.metrics.ranking import rank_methods
from mitigate.objectives import OBJECTIVES
from mitigate.policies import load_policy, resolve_checkpoint
from mitigate.recipes.common import same_task
from mitigate.recipes.evaluate import demonstration_bias, evaluate_rows, id_split, split_prompts
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.train import train
from mitigate.report import SCALARS, write_report
from mitigate.tasks import make_task


def method_config(cfg: C.Config, method: str) -> C.Config:
    """The config of one method: its `reproduce.method_configs` entry merged over `cfg`. A method
    without an entry is the registered objective of that name with its default settings."""
    entry = cfg.reproduce.method_configs.get(method)
    if entry is None:
        if method not in OBJECTIVES:
            allowed = ["base", *OBJECTIVES.names(), *cfg.reproduce.method_configs]
            raise C.ConfigError(f"unknown method '{method}' in reproduce.methods; allowed: {', '.join(allowed)}")
        entry = {"train.objective": {"name": method}}
    if not isinstance(entry, dict):
        raise C.ConfigError(f"reproduce.method_configs.{method} must be a mapping of overrides, got {entry!r}")
    return C.with_overrides(cfg, entry)


def summarize_method(per_seed_rows: dict[int, dict]) -> dict:
    """per_seed_rows: {seed: {"id": rows, <ood split>: rows, ...}} -> one summary.json entry."""
    seeds = sorted(per_seed_rows)
    splits = [k for k in per_seed_rows[seeds[0]] if k != "id"]

    def block(rows):
        m = mean_metrics(rows)
        return {"pass_at_k": m["pass_at_k"], **{k: m[k] for k in SCALARS}}

    per_seed = [{"seed": s, "id": block(per_seed_rows[s]["id"]),
                 "ood": {k: {"pass_at_k": block(per_seed_rows[s][k])["pass_at_k"]} for k in splits}}
                for s in seeds]
    top = mean_metrics([{"id": p["id"], "ood": p["ood"]} for p in per_seed])
    ci_id = hierarchical_ci([[{"pass_at_k": r["pass_at_k"], **{k: r[k] for k in SCALARS}}
                              for r in per_seed_rows[s]["id"]] for s in seeds])
    ci_ood = {k: hierarchical_ci([[{"pass_at_k": r["pass_at_k"]} for r in per_seed_rows[s][k]] for s in seeds])
              for k in splits}
    return {"seeds": seeds, "id": top["id"], "ood": top["ood"], "ci95": {"id": ci_id, "ood": ci_ood},
            "per_seed": per_seed}


def budget(cfg: C.Config, method_cfgs: dict) -> dict:
    t = cfg.train
    return {"steps": t.steps, "prompts_per_step": t.prompts_per_step, "group_size": t.group_size, "lr": t.lr,
            "eval_samples": cfg.eval.samples, "pretrain_steps": cfg.pretrain.steps,
            "objectives": {m: C.to_dict(c.train.objective) for m, c in method_cfgs.items()},
            "regularizers": {m: [C.to_dict(r) for r in c.train.regularizers] for m, c in method_cfgs.items()}}


def reproduce(cfg: C.Config, out: str | Path, overwrite: bool = False, quiet: bool = False,
              base: str | Path | None = None) -> Path:
    """`base`: reuse this pretrained base (run or checkpoint folder) instead of pretraining one,
    e.g. for ablation sweeps that share the main comparison's base model."""
    # ---- validate everything before any work
    out = Path(out)
    check_output(out, overwrite, inputs=[base] if base else [])
    methods = list(cfg.reproduce.methods)
    train_methods = [m for m in methods if m != "base"]
    method_cfgs = {m: method_config(cfg, m) for m in train_methods}
    seeds = list(cfg.reproduce.seeds)
    task = make_task(cfg.task)
    if base is not None:
        base_ckpt = resolve_checkpoint(base)
        base_policy, meta = load_policy(base_ckpt)
        if not same_task(meta.get("task"), cfg):
            raise C.ConfigError(f"--base '{base}' was pretrained on other task parameters than this config's")
    t0 = time.time()
    with run_folder(out, overwrite, inputs=[base] if base else []) as tmp:
        write_text(tmp / "config.yaml", C.dump(cfg))
        bar = tqdm(total=1 + len(train_methods) * len(seeds), desc="reproduce", unit="run", disable=quiet)
        # ---- base model: pretrain (or reuse), evaluate, probe its demonstration bias
        if base is None:
            bar.set_postfix_str("pretrain base")
            base_ckpt = pretrain(cfg, tmp / "base", quiet=True) / "checkpoint"
            base_policy, _ = load_policy(base_ckpt)
        rows, bias = {}, None
        if "base" in methods:  # a sweep on a shared base may leave it out of its table
            rows["base"] = {cfg.seed: evaluate_rows(base_policy, task, cfg.eval,
                                                    torch_stream(cfg.seed, "eval_trained"), quiet)}
            prompts = split_prompts(task, id_split(task, cfg.eval), cfg.eval.max_prompts)
            bias = demonstration_bias(base_policy, task, prompts,
                                      seed=cfg.seed, batch_size=cfg.eval.batch_size, quiet=True)
        bar.update(1)
        # ---- every method x seed: train from the base, evaluate on the same prompts
        for m in train_methods:
            rows[m] = {}
            for s in seeds:
                bar.set_postfix_str(f"{m} seed {s}")
                mcfg = C.with_overrides(method_cfgs[m], {"seed": s})
                run = train(mcfg, base_ckpt, tmp / f"{m}-seed{s}", quiet=True, method=m)
                policy, _ = load_policy(run)
                rows[m][s] = evaluate_rows(policy, task, cfg.eval, torch_stream(s, "eval_trained"), quiet)
                bar.update(1)
        bar.close()
        # ---- summary.json and summary.md
        summary = {"preset": cfg.preset, "wall_seconds": round(time.time() - t0, 1),
                   "id_split": cfg.eval.id_split, "base_checkpoint": str(base) if base else "base/checkpoint",
                   "methods": {m: summarize_method(rows[m]) for m in methods if m in rows},
                   "budget": budget(cfg, method_cfgs)}
        if bias is not None:
            summary["base_demo_bias"] = bias
        if len(summary["methods"]) > 1:
            summary["ranking"] = rank_methods(summary)
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return out
