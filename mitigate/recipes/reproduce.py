"""`mitigate reproduce`: pretrain the base once, train every method for every seed with equal
budgets, evaluate all on the ID split and the task's OOD splits, and write summary.json and
summary.md (figures: `python -m analysis figures OUT`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.budget import Budget
from mitigate.core.io import check_output, run_folder, write_json, write_text
from mitigate.core.seeding import torch_stream
from mitigate.metrics.ranking import rank_methods, saturated_columns
from mitigate.metrics.summary import frontier_gaps, summarize
from mitigate.objectives import OBJECTIVES
from mitigate.policies import load_policy, resolve_checkpoint
from mitigate.recipes.common import same_task
from mitigate.recipes.evaluate import demonstration_bias, eval_record, evaluate_rows, id_split, split_prompts
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.train import train
from mitigate.report import write_report
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


def budget(cfg: C.Config, method_cfgs: dict) -> dict:
    """The settings every trained method shares, and each one's objective and regularizers."""
    t = cfg.train
    return {"steps": t.steps, "prompts_per_step": t.prompts_per_step, "group_size": t.group_size, "lr": t.lr,
            "kl_coef": t.kl_coef, "kl_estimator": t.kl_estimator,
            "eval_samples": cfg.eval.samples, "pretrain_steps": cfg.pretrain.steps,
            "objectives": {m: C.to_dict(c.train.objective) for m, c in method_cfgs.items()},
            "regularizers": {m: [C.to_dict(r) for r in c.train.regularizers] for m, c in method_cfgs.items()}}


def mean_budget(folders: list[Path]) -> dict:
    """A method's budget per training run (mean over its seeds) from each run's budget.json."""
    records = [json.loads((f / "budget.json").read_text()) for f in folders]
    out = {k: float(np.mean([r[k] for r in records])) for k in records[0] if k != "processes"}
    return {k: (round(v, 2) if k == "wall_seconds" else int(round(v))) for k, v in out.items()}


@torch.no_grad()
def interpolated(base_policy, trained_policy, alpha: float):
    """A frozen policy with weights theta_base + alpha (theta_trained - theta_base): a weaker
    update of the same run, one point of its method's trade-off curve."""
    out = trained_policy.frozen_copy()
    for p, b, t in zip(out.model.parameters(), base_policy.model.parameters(), trained_policy.model.parameters()):
        p.copy_(b + alpha * (t - b))
    return out


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
        bar = tqdm(total=1 + len(train_methods) * len(seeds), desc="reproduce", unit="run", disable=quiet,
                   dynamic_ncols=True)
        # ---- base model: pretrain (or reuse), evaluate, probe its demonstration bias
        if base is None:
            bar.set_postfix_str("pretrain base")
            base_ckpt = pretrain(cfg, tmp / "base", quiet=True) / "checkpoint"
            base_policy, _ = load_policy(base_ckpt)
        rows, bias, folders = {}, None, {}
        if "base" in methods:  # a sweep on a shared base may leave it out of its table
            rows["base"] = {cfg.seed: evaluate_and_record(base_policy, task, cfg.eval, cfg.seed, tmp / "base", quiet)}
            prompts = split_prompts(task, id_split(task, cfg.eval), cfg.eval.max_prompts)
            bias = demonstration_bias(base_policy, task, prompts,
                                      seed=cfg.seed, batch_size=cfg.eval.batch_size, quiet=True)
        bar.update(1)
        # ---- every method x seed: train from the base, evaluate on the same prompts; the
        # trade-off methods also at weaker updates (weights interpolated with the base)
        curves = {m: [] for m in cfg.reproduce.tradeoff_methods if m in train_methods and "base" in methods}
        for m in train_methods:
            rows[m], folders[m] = {}, []
            for s in seeds:
                bar.set_postfix_str(f"{m} seed {s}")
                mcfg = C.with_overrides(method_cfgs[m], {"seed": s})
                run = train(mcfg, base_ckpt, tmp / f"{m}-seed{s}", quiet=True, method=m)
                folders[m].append(run)
                policy, _ = load_policy(run)
                rows[m][s] = evaluate_and_record(policy, task, cfg.eval, s, run, quiet)
                for a in cfg.reproduce.interpolation if m in curves else ():
                    point = f"{m}@{a:g}"
                    rows.setdefault(point, {})[s] = evaluate_and_record(
                        interpolated(base_policy, policy, a), task, cfg.eval, s, run / f"interpolated-{a:g}", quiet)
                bar.update(1)
        bar.close()
        # ---- summary.json and summary.md
        summary_rows, replicates = summarize(rows, cfg.reproduce.paired_against, cfg.reproduce.n_boot, cfg.seed)
        entries = {m: summary_rows[m] for m in methods if m in rows}
        for m in train_methods:
            entries[m]["budget"] = mean_budget(folders[m])
        if "base" in entries:  # the base is where every run starts: it spends no post-training budget
            entries["base"]["budget"] = Budget().to_dict()
        summary = {"preset": cfg.preset, "wall_seconds": round(time.time() - t0, 1),
                   "id_split": cfg.eval.id_split, "base_checkpoint": str(base) if base else "base/checkpoint",
                   "methods": entries, "budget": budget(cfg, method_cfgs)}
        if curves:
            summary["tradeoff"] = tradeoff_block(summary_rows, curves, cfg.reproduce.interpolation, replicates,
                                                 train_methods)
        if bias is not None:
            summary["base_demo_bias"] = bias
        if len(summary["methods"]) > 1:
            summary["ranking"] = rank_methods({"methods": entries}, replicates)
            summary["not_ranked_saturated"] = saturated_columns({"methods": entries})
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return out


def evaluate_and_record(policy, task, eval_cfg, seed: int, folder: Path, quiet: bool) -> dict[str, list[dict]]:
    """Evaluate with the seed's evaluation stream; the eval JSON (with per-prompt rows) goes to
    `folder/eval.json` so anyone can recompute the summary's statistics."""
    rows = evaluate_rows(policy, task, eval_cfg, torch_stream(seed, "eval_trained"), quiet)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "eval.json", {"seed": seed, **eval_record(rows, eval_cfg)})
    return rows


def tradeoff_block(summary_rows: dict, curves: dict, alphas: list, replicates: dict, judged: list[str]) -> dict:
    """The trade-off curves (base -> weaker updates -> trained method) and how far every other
    method lies above each curve, on ID concepts and each OOD split's largest pass@k, at its ID pass@1."""
    members = {m: ["base", *[f"{m}@{a:g}" for a in sorted(alphas)], m] for m in curves}
    keys = replicates["keys"]
    ys = [("id", ("concepts",))] + [(s, max((k for k in keys[s] if k[0] == "pass_at_k"), key=lambda k: int(k[1])))
                                    for s in keys if s != "id"]
    return {"curves": {m: [{"method": p, "alpha": 0.0 if p == "base" else 1.0 if p == m else float(p.split("@")[1]),
                            "id": summary_rows[p]["id"], "ood": summary_rows[p]["ood"], "ci95": summary_rows[p]["ci95"]}
                           for p in ms] for m, ms in members.items()},
            "x": "id pass_at_k/1",
            "gaps_above": frontier_gaps(replicates, members, judged, ("id", ("pass_at_k", "1")), ys)}
