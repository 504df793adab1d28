"""`mitigate reproduce`: pretrain the base once, train every method for every seed with equal
budgets, evaluate all on the ID split and the task's OOD splits, and write summary.json and
summary.md (figures: `python -m analysis figures OUT`).

The comparison works in `OUT.partial`; `resume=True` reuses what is finished there (the base,
each trained run, each eval.json) and continues a half-finished run from its checkpoint, so a
killed comparison resumes where it stopped and ends with the same summary. A sweep over
comparisons calls `reproduce(..., resume=True)` per point."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.budget import Budget
from mitigate.core import resume as checkpointing
from mitigate.core.io import plan_run, read_json, resumable_run, versions, write_json, write_meta
from mitigate.core.seeding import device_for, torch_stream
from mitigate.core.tracking import parse_report_to
from mitigate.metrics.primary import check_endpoints, primary_block
from mitigate.metrics.ranking import rank_methods, saturated_columns
from mitigate.metrics.ratio import RATIO_KEYS
from mitigate.metrics.summary import frontier_gaps, ratio_block, summarize
from mitigate.objectives import OBJECTIVES
from mitigate.policies import load_policy, resolve_checkpoint
from mitigate.recipes.common import (
    cell_threads,
    check_decided_by_checkpoint,
    check_methods_share_the_base,
    check_same_config,
    default_jobs,
    external_teacher,
    finished_run,
    note_resume,
    run_in_pool,
    run_record,
)
from mitigate.recipes.evaluate import (
    demonstration_bias,
    eval_record,
    evaluate_rows,
    id_split,
    ratio_reference,
    rows_from_record,
    split_prompts,
    text_diversity,
    uncertainty_markers,
)
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.train import train
from mitigate.report import write_report
from mitigate.rollout import generate
from mitigate.tasks import make_task


def method_config(cfg: C.Config, method: str) -> C.Config:
    """The config of one method: its `reproduce.method_configs` entry merged over `cfg`. A method
    without an entry is the registered objective of that name with its default settings."""
    entry = cfg.reproduce.method_configs.get(method)
    if entry is None:
        if method not in OBJECTIVES:
            raise C.ConfigError(f"unknown method '{method}' in reproduce.methods; allowed: {allowed_methods(cfg)}")
        entry = {"train.objective": {"name": method}}
    if not isinstance(entry, dict):
        raise C.ConfigError(f"reproduce.method_configs.{method} must be a mapping of overrides, got {entry!r}")
    return C.with_overrides(cfg, entry)


def objective_record(section) -> dict:
    """An objective's settings as summary.json records them: every field, except those its config
    class lists in `_quiet_at_default` (fields added after results were recorded) while they are at
    their defaults, so a summary made before they existed still compares key for key. An absent
    field in a record is at its default."""
    record = C.to_dict(section)
    for name in getattr(type(section), "_quiet_at_default", ()):
        field = type(section).__dataclass_fields__.get(name)
        if field is not None and name in record and record[name] == field.default:
            del record[name]
    return record


def allowed_methods(cfg: C.Config) -> str:
    """The names reproduce.methods may use, each once: base, the registered objectives, and the
    entries of reproduce.method_configs (which may reuse an objective's name)."""
    return ", ".join(dict.fromkeys(["base", *OBJECTIVES.names(), *sorted(cfg.reproduce.method_configs)]))


def budget(cfg: C.Config, method_cfgs: dict) -> dict:
    """The settings every trained method shares, and each one's objective and regularizers."""
    t = cfg.train
    return {"steps": t.steps, "prompts_per_step": t.prompts_per_step, "group_size": t.group_size, "lr": t.lr,
            "kl_coef": t.kl_coef, "kl_estimator": t.kl_estimator,
            "eval_samples": cfg.eval.samples, "pretrain_steps": cfg.pretrain.steps,
            "objectives": {m: objective_record(c.train.objective) for m, c in method_cfgs.items()},
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
              base: str | Path | None = None, resume: bool = False, report_to: str = "none", jobs: int | None = 1,
              imports: list[str] = ()) -> Path:
    """`base`: reuse this pretrained base (run or checkpoint folder) instead of pretraining one,
    e.g. for ablation sweeps that share the main comparison's base model. `resume`: continue the
    unfinished comparison in `OUT.partial`: finished runs and evaluations are reused, a
    half-finished training run continues from its last checkpoint; the summary is bit-identical
    to an uninterrupted run's. `report_to`: experiment trackers of every pretraining and training
    run (`mitigate.core.tracking`). `jobs`: worker processes for the method x seed runs (the CLI's
    default: one per core); every run, here or in a worker, uses one torch thread, so the numbers
    do not depend on `jobs`. `imports`: the `--import` registrations the workers load."""
    with cell_threads():
        return _reproduce(cfg, out, overwrite, quiet, base, resume, report_to, jobs, imports)


def _reproduce(cfg: C.Config, out, overwrite: bool, quiet: bool, base, resume: bool, report_to: str,
               jobs: int | None, imports) -> Path:
    # ---- validate everything before any work
    out = Path(out)
    methods = list(cfg.reproduce.methods)
    check_methods(cfg)
    parse_report_to(report_to)
    plan = plan_run(out, overwrite, inputs=[base] if base else [], resume=resume)
    if plan.status == "complete":
        return finished_run(out, cfg, quiet)
    train_methods = [m for m in methods if m != "base"]
    method_cfgs = {m: method_config(cfg, m) for m in train_methods}
    seeds = list(cfg.reproduce.seeds)
    task = make_task(cfg.task)
    text_diversity(task, cfg.eval)  # text tasks: the embedder loads (or fails) before any work
    uncertainty_markers(task, cfg.eval)  # and the marker list of eval.uncertainty_language
    try:
        controls = [sharpened(t) for t in cfg.reproduce.sharpening] if "base" in methods else []
        strata = check_strata(cfg.reproduce.strata)
        endpoints = check_endpoints(cfg.reproduce.primary, [*methods, *controls],
                                    ["id", *task.ood_splits, *strata])
    except ValueError as e:
        raise C.ConfigError(str(e)) from e
    device = device_for(cfg.device)  # evaluation runs here; training places itself (accelerate)
    jobs = default_jobs(jobs, device.type)
    for m, c in method_cfgs.items():  # every external teacher found and compatible before any work
        try:
            external_teacher(c, record=False)
        except C.ConfigError as e:
            raise C.ConfigError(f"method '{m}': {e}") from e
    check_methods_share_the_base(cfg, method_cfgs, "reproduce.method_configs")
    if base is not None:
        base_ckpt = resolve_checkpoint(base)
        base_policy, meta = load_policy(base_ckpt, device)
        check_decided_by_checkpoint(meta, cfg, base)  # and so every method's (checked above)
    t0 = time.time()
    with resumable_run(plan) as tmp:
        identity = {"base": str(base) if base else None, "versions": versions()}
        if resume and (tmp / "meta.json").is_file():  # ---- resume: the same comparison, or an error
            check_same_config(tmp, cfg)
            checkpointing.check_same_run(read_json(tmp / "meta.json", "run record"), identity, tmp)
            note_resume(tmp)
        else:
            write_meta(tmp, C.dump(cfg), cfg.seed, "reproduce", {**run_record(cfg), **identity})
        bar = tqdm(total=1 + len(train_methods) * len(seeds), desc="reproduce", unit="run", disable=quiet,
                   dynamic_ncols=True)
        # ---- base model: pretrain (or reuse), evaluate, probe its demonstration bias
        if base is None:
            bar.set_postfix_str("pretrain base")
            checkpointing.fault_point("reproduce", "base")
            base_ckpt = pretrain(cfg, tmp / "base", quiet=True, resume=True, report_to=report_to) / "checkpoint"
            base_policy, _ = load_policy(base_ckpt, device)
        rows, bias, folders = {}, None, {}
        prompts = split_prompts(task, id_split(task, cfg.eval), cfg.eval.max_prompts)
        reference_file = base_reference(base_policy, task, prompts, cfg.eval, tmp)
        reference = read_json(reference_file, "ratio-test reference") if reference_file else None
        members = stratum_members(base_policy, task, prompts, cfg, tmp)
        if "base" in methods:  # a sweep on a shared base may leave it out of its table
            rows["base"] = {cfg.seed: evaluate_and_record(base_policy, task, cfg.eval, cfg.seed, tmp / "base", quiet,
                                                          reference)}
            bias = demonstration_bias(base_policy, task, prompts, n=cfg.reproduce.demo_bias_samples,
                                      seed=cfg.seed, batch_size=cfg.eval.batch_size, quiet=True)
            # ---- sharpening control: the base sampled at lower temperatures (no training)
            for t in cfg.reproduce.sharpening:
                eval_t = C.build(C.EvalConfig, {**C.to_dict(cfg.eval), "temperature": t})
                rows[sharpened(t)] = {cfg.seed: evaluate_and_record(base_policy, task, eval_t, cfg.seed,
                                                                    eval_folder(tmp, sharpened(t), cfg.seed), quiet,
                                                                    reference)}
        bar.update(1)
        # ---- every method x seed (a "cell"): train from the base, evaluate on the same prompts; the
        # trade-off methods also at weaker updates (weights interpolated with the base). With
        # `resume`, a finished run is reused (`train` returns it) and so is a finished evaluation.
        curves = {m: [] for m in cfg.reproduce.tradeoff_methods if m in train_methods and "base" in methods}
        # the trade-off methods (three more evaluations each) first, so no worker is left with them at the end
        cells = sorted(((m, s) for m in train_methods for s in seeds), key=lambda c: c[0] not in curves)
        cell_args = {f"{m}-seed{s}": (C.to_dict(C.with_overrides(method_cfgs[m], {"seed": s})), str(base_ckpt),
                              str(tmp / f"{m}-seed{s}"), m, C.to_dict(cfg.eval), s,
                              list(cfg.reproduce.interpolation) if m in curves else [], report_to,
                              str(reference_file) if reference_file else "")
                     for m, s in cells}
        parallel = jobs > 1 and len(cell_args) > 1
        if parallel:  # every cell in a worker; the loop below then reads back what they wrote
            run_in_pool(_cell_job, cell_args, jobs, imports, bar, "mitigate reproduce: {key} failed; the finished "
                        "runs are kept, run the same command with --resume to finish the rest")
        for m in train_methods:
            rows[m], folders[m] = {}, []
            for s in seeds:
                bar.set_postfix_str(f"{m} seed {s}")
                run, rows[m][s], points = run_cell(*cell_args[f"{m}-seed{s}"], base_policy=base_policy, quiet=quiet)
                folders[m].append(run)
                for point, point_rows in points.items():
                    rows.setdefault(point, {})[s] = point_rows
                if not parallel:
                    bar.update(1)
        bar.close()
        # ---- summary.json and summary.md
        with_strata(rows, members)
        summary_rows, replicates = summarize(rows, cfg.reproduce.paired_against, cfg.reproduce.n_boot, cfg.seed,
                                             strata=list(members))
        controls = [sharpened(t) for t in cfg.reproduce.sharpening if sharpened(t) in rows]
        entries = {m: summary_rows[m] for m in [*methods, *controls] if m in rows}
        for m in train_methods:
            entries[m]["budget"] = mean_budget(folders[m])
        for m in ["base", *controls]:  # the base is where every run starts: it spends no post-training budget
            if m in entries:
                entries[m]["budget"] = Budget().to_dict()
        summary = {"preset": cfg.preset, "wall_seconds": round(time.time() - t0, 1),
                   "id_split": cfg.eval.id_split, "base_checkpoint": str(base) if base else "base/checkpoint",
                   "diversity_r": cfg.eval.diversity_r, "methods": entries, "budget": budget(cfg, method_cfgs)}
        if curves:
            summary["tradeoff"] = tradeoff_block(summary_rows, curves, cfg.reproduce.interpolation, replicates,
                                                 train_methods)
        if members:
            summary["strata"] = {name: {**strata[name], "prompts": idx, "n_prompts": len(idx)}
                                 for name, idx in members.items()}
        if controls:
            summary["sharpening"] = sharpening_block(cfg.reproduce.sharpening, replicates, train_methods)
        ratio = ratio_block(replicates, list(entries), cfg.reproduce.paired_against)
        if ratio:
            summary["ratio_test"] = {"methods": ratio, **ratio_counts(reference)}
        if endpoints:
            summary["primary"] = primary_block(endpoints, replicates, cfg.reproduce.alpha)
        if bias is not None:
            summary["base_demo_bias"] = bias
        ranked = {m: e for m, e in entries.items() if m not in controls}  # the sharpening rows are a control
        if len(ranked) > 1:
            summary["ranking"] = rank_methods({"methods": ranked}, replicates)
            summary["not_ranked_saturated"] = saturated_columns({"methods": ranked})
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return out


def run_cell(cfg_dict: dict, base_ckpt: str, folder: str, method: str, eval_dict: dict, seed: int,
             alphas: list[float], report_to: str, reference_file: str = "", base_policy=None, quiet: bool = True):
    """Train one method with one seed from the base (or reuse the finished run), evaluate it, and
    evaluate its weaker updates at `alphas` (weights interpolated with the base). Returns (run
    folder, its eval rows, {"METHOD@ALPHA": rows}). Plain arguments: a worker process runs it too.
    `reference_file`: the base's ratio-test reference (`base_reference`), or "" for none."""
    cfg, eval_cfg, folder = C.from_dict(cfg_dict), C.build(C.EvalConfig, eval_dict), Path(folder)
    device = device_for(cfg.device)
    checkpointing.fault_point("reproduce", folder.name)
    run = train(cfg, base_ckpt, folder, quiet=True, method=method, resume=True, report_to=report_to)
    task = make_task(cfg.task)
    trained = Lazy(lambda: load_policy(run, device)[0])
    base = Lazy(lambda: base_policy if base_policy is not None else load_policy(Path(base_ckpt), device)[0])
    reference = read_json(Path(reference_file), "ratio-test reference") if reference_file else None
    rows = evaluate_and_record(trained, task, eval_cfg, seed, run, quiet, reference)
    points = {f"{method}@{a:g}": evaluate_and_record(Lazy(lambda a=a: interpolated(base(), trained(), a)), task,
                                                     eval_cfg, seed, run / f"interpolated-{a:g}", quiet, reference)
              for a in alphas}
    return run, rows, points


def _cell_job(*args) -> str:
    """A worker's cell: its results go to the run folder (read back by `run_cell` in the parent)."""
    run_cell(*args)
    return Path(args[2]).name


def check_methods(cfg: C.Config) -> None:
    """The comparison's lists, checked before any work: at least one method, and seeds for the
    trained ones."""
    if not cfg.reproduce.methods:
        raise C.ConfigError("reproduce.methods is empty: name at least one method to compare; allowed: "
                            f"{allowed_methods(cfg)}")
    duplicated = sorted({m for m in cfg.reproduce.methods if cfg.reproduce.methods.count(m) > 1})
    if duplicated:
        raise C.ConfigError(f"reproduce.methods names {', '.join(map(str, duplicated))} more than once")
    seeds = cfg.reproduce.seeds
    if any(m != "base" for m in cfg.reproduce.methods) and not seeds:
        raise C.ConfigError("reproduce.seeds is empty: give at least one training seed, e.g. [0, 1, 2]")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise C.ConfigError(f"reproduce.seeds must be distinct integers >= 0, got {seeds!r}")
    alphas = cfg.reproduce.interpolation
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1 for a in alphas) or \
            len(set(alphas)) != len(alphas):
        raise C.ConfigError("reproduce.interpolation must list distinct weights alpha in (0, 1) (a weaker update "
                            f"theta_base + alpha (theta_trained - theta_base)), got {alphas!r}")
    temps = cfg.reproduce.sharpening
    if temps:
        bad = [t for t in temps if isinstance(t, bool) or not isinstance(t, (int, float))
               or not 0 < t < cfg.eval.temperature]
        if bad or len(set(temps)) != len(temps):
            raise C.ConfigError(f"reproduce.sharpening must list distinct temperatures in (0, eval.temperature = "
                                f"{cfg.eval.temperature:g}), got {temps!r}")


def evaluate_and_record(policy, task, eval_cfg, seed: int, folder: Path, quiet: bool, reference: dict | None = None
                        ) -> dict[str, list[dict]]:
    """Evaluate with the seed's evaluation stream; the eval JSON (with per-prompt rows) goes to
    `folder/eval.json` so anyone can recompute the summary's statistics. An eval.json already there
    with these settings (a resumed comparison) is read back instead: its rows are the same numbers.
    `policy` may be a `Lazy` one, built only when an evaluation is needed. `reference`: the base's
    ratio-test reference (`evaluate.ratio_reference`), or None."""
    path = folder / "eval.json"
    if path.is_file():
        record = read_json(path, "evaluation")
        if record.get("seed") == seed and all(record.get(k) == v for k, v in eval_settings(eval_cfg).items()):
            return rows_from_record(record)
    if isinstance(policy, Lazy):
        policy = policy()
    rows = evaluate_rows(policy, task, eval_cfg, torch_stream(seed, "eval_trained"), quiet, reference)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"seed": seed, **eval_record(rows, eval_cfg)})
    return rows


class Lazy:
    """A value built on first call (a policy that a resumed comparison may not need to load)."""

    def __init__(self, build):
        self.build, self.value, self.built = build, None, False

    def __call__(self):
        if not self.built:
            self.value, self.built = self.build(), True
        return self.value


def eval_settings(eval_cfg) -> dict:
    """The settings an eval.json records, compared before one is reused."""
    return {"samples": eval_cfg.samples, "temperature": eval_cfg.temperature, "id_split": eval_cfg.id_split,
            "diversity_r": eval_cfg.diversity_r, "ratio_test": eval_cfg.ratio_test, "ratio_columns": list(RATIO_KEYS)}


STRATUM_FIELDS = {"low": 0.0, "high": 1.0, "samples": 512, "seed": 1000}


def check_strata(strata: dict) -> dict[str, dict]:
    """`reproduce.strata` with defaults filled in, or a ConfigError naming the problem."""
    if not isinstance(strata, dict):
        raise C.ConfigError("reproduce.strata must be a mapping {NAME: {low, high, samples, seed}}, "
                            f"got {strata!r}")
    out = {}
    for name, spec in strata.items():
        if name in ("id", "ood") or not isinstance(name, str):
            raise C.ConfigError(f"reproduce.strata: '{name}' cannot name a stratum (reserved or not a string)")
        if not isinstance(spec, dict) or set(spec) - set(STRATUM_FIELDS):
            raise C.ConfigError(f"reproduce.strata.{name} must be a mapping with keys among "
                                f"{', '.join(STRATUM_FIELDS)}, got {spec!r}")
        spec = {**STRATUM_FIELDS, **spec}
        bounds = [spec[k] for k in ("low", "high")]
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds) or \
                not (0.0 <= spec["low"] < spec["high"] <= 1.0):
            raise C.ConfigError(f"reproduce.strata.{name}: need numbers 0 <= low < high <= 1, "
                                f"got {spec['low']!r}, {spec['high']!r}")
        if isinstance(spec["samples"], bool) or not isinstance(spec["samples"], int) or \
                not 1 <= spec["samples"] <= C.MAX_SAMPLES:
            raise C.ConfigError(f"reproduce.strata.{name}.samples must be an integer >= 1 and <= {C.MAX_SAMPLES}, "
                                f"got {spec['samples']!r}")
        if isinstance(spec["seed"], bool) or not isinstance(spec["seed"], int) or not 0 <= spec["seed"] < 2**32:
            raise C.ConfigError(f"reproduce.strata.{name}.seed must be an integer in [0, 2**32), got {spec['seed']!r}")
        out[name] = spec
    return out


def stratum_members(base_policy, task, prompts, cfg: C.Config, folder: Path) -> dict[str, list[int]]:
    """{stratum: indices into the ID prompts} with the base's success probability p in (low, high),
    p measured once per stratum setting on `samples` draws of the stratum's own seed (not the
    evaluation's samples, so a stratum does not select on the noise of the numbers it reports).
    Kept in `folder/strata.json` (reused when resuming)."""
    strata = check_strata(cfg.reproduce.strata)
    if not strata:
        return {}
    path = folder / "strata.json"
    saved = read_json(path, "strata") if path.is_file() else {}
    out, probs = {}, dict(saved.get("p", {}))
    for name, spec in strata.items():
        key = f"{spec['samples']}@{spec['seed']}"
        if key not in probs or len(probs[key]) != len(prompts):
            r = generate(base_policy, task, prompts, spec["samples"], cfg.eval.temperature,
                         torch_stream(spec["seed"], "eval"), cfg.eval.batch_size)
            probs[key] = r.correct.reshape(len(prompts), spec["samples"]).mean(1).tolist()
        out[name] = [i for i, p in enumerate(probs[key]) if spec["low"] < p < spec["high"]]
        if not out[name]:
            raise C.ConfigError(f"reproduce.strata.{name}: no ID prompt has base success probability in "
                                f"({spec['low']:g}, {spec['high']:g}); widen it or drop it")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {"p": probs, "members": out})
    return out


def with_strata(rows: dict, members: dict[str, list[int]]) -> None:
    """Add each stratum as a result key of every method and seed: its prompts' ID rows."""
    for by_seed in rows.values():
        for split_rows in by_seed.values():
            for name, idx in members.items():
                split_rows[name] = [split_rows["id"][i] for i in idx]


def sharpened(temperature: float) -> str:
    """The name of the base sampled at a lower temperature (a sharpening-control row)."""
    return f"base@t{temperature:g}"


def eval_folder(out: Path, method: str, seed: int) -> Path:
    """Where a comparison keeps one evaluated model's folder (with its eval.json): the base, a
    sharpening row under the base, or a method's run for one seed."""
    if method == "base":
        return out / "base"
    if method.startswith("base@t"):
        return out / "base" / f"temperature-{method[len('base@t'):]}"
    return out / f"{method}-seed{seed}"


def base_reference(base_policy, task, prompts, eval_cfg, folder: Path) -> Path | None:
    """The ratio test's base reference (`evaluate.ratio_reference`) in `folder/ratio_reference.json`,
    made once per comparison (reused when resuming); None when the test is off or the task's correct
    set is not enumerable."""
    if not eval_cfg.ratio_test:
        return None
    path = folder / "ratio_reference.json"
    if path.is_file():
        ref = read_json(path, "ratio-test reference")
        if ref.get("prompts") == [list(map(int, q.tokens)) for q in prompts]:
            return path
    ref = ratio_reference(base_policy, task, prompts, eval_cfg.batch_size)
    if ref is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, ref)
    return path


def ratio_counts(reference: dict) -> dict:
    """How many prompts and pairs of correct outputs the ratio test pools."""
    sizes = [len(b) for b in reference["base_logp"]]
    return {"n_prompts": sum(P >= 2 for P in sizes), "n_pairs": int(sum(P * (P - 1) // 2 for P in sizes))}


def sharpening_block(temperatures: list, replicates: dict, judged: list[str]) -> dict:
    """The sharpening control: the base at lower temperatures, as a curve (base, then each
    temperature) every trained method is judged against at its ID pass@1, like the trade-off curves:
    does a method narrow more than sampling the base more greedily does at the same accuracy?"""
    members = ["base", *[sharpened(t) for t in sorted(temperatures, reverse=True)]]
    keys = replicates["keys"]
    ys = [("id", ("concepts_at_r",) if ("concepts_at_r",) in keys["id"] else ("concepts",))]
    ys += [(s, max((k for k in keys[s] if k[0] == "pass_at_k"), key=lambda k: int(k[1]))) for s in keys if s != "id"]
    return {"temperatures": sorted(temperatures, reverse=True), "methods": members[1:], "x": "id pass_at_k/1",
            "gaps_above": frontier_gaps(replicates, {"sharpening": members}, judged, ("id", ("pass_at_k", "1")), ys)}


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
