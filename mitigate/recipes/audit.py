"""`mitigate audit --base CKPT --model CKPT [--model CKPT ...]`: did post-training narrow what a
model produces? Any two or more checkpoints on one task, however they were trained (this package,
TRL, verl, ...), with the package's own evaluation.

Every checkpoint (this package's run or checkpoint folder, or any Hugging Face causal-LM folder)
is sampled n times per prompt on the task's ID split and each OOD split with the same evaluation
stream (`torch_stream(seed, "eval_trained")`, the stream `reproduce` evaluates a seed's runs with,
so for a reproduce folder's checkpoints the samples, and every per-prompt number, are that seed's
`eval.json` rows). Then, as `reproduce` summarises: pass@k (unbiased estimator), diversity among
correct samples (concepts and the accuracy-free concepts among r correct on the graph task;
semantic clusters, Vendi score and uncertainty markers on text tasks), the ratio test where the
task's correct outputs are enumerable, and paired intervals of each model minus the base over a
bootstrap of prompts. A verdict per model says in plain words what moved.

    OUT/audit.json   the summary (the schema of `reproduce`'s summary.json) plus `checkpoints`, `verdicts`
    OUT/audit.md     the verdicts, then the tables of summary.md
    OUT/pass_at_k.*, OUT/diversity.*   figures (`mitigate-analysis figures OUT` redraws them)

The task is the base checkpoint's own (the record of a run of this package); for a Hugging Face
folder, which records none, `--preset`/`--config`/`--set` name it. A checkpoint of another task or
vocabulary is refused before any sampling, with a message naming it.
"""

from __future__ import annotations

import time
from pathlib import Path

from mitigate import config as C
from mitigate.core.io import plan_run, resumable_run, write_json, write_text
from mitigate.core.seeding import device_for, torch_stream
from mitigate.metrics.summary import summarize
from mitigate.policies import load_policy
from mitigate.policies.base import META_FILE, CheckpointError, checkpoint_meta
from mitigate.policies.hf import HFConfig, HFPolicy
from mitigate.recipes.common import cell_threads, check_decided_by_checkpoint, checkpoint_settings
from mitigate.recipes.evaluate import evaluate_rows, id_split, ratio_reference, split_prompts, text_diversity
from mitigate.report import report_markdown
from mitigate.tasks import make_task

BASE = "base"
DIVERSITY_KEYS = (("concepts_at_r", "concepts among {r} correct samples"),
                  ("concepts", "concepts among correct samples"),
                  ("semantic_clusters", "semantic clusters among correct answers"),
                  ("lexical_clusters", "lexical clusters among correct answers"))


def is_package_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / META_FILE).is_file() or (path / "checkpoint" / META_FILE).is_file()


def audit_config(base: str | Path, preset: str | None = None, config: str | None = None,
                 overrides: list[str] = ()) -> C.Config:
    """The audit's config: the base checkpoint's recorded one (plus `overrides`), or, for a Hugging
    Face folder, the one `preset`/`config`/`overrides` build (which must name the task)."""
    if is_package_checkpoint(base):
        meta = checkpoint_meta(base)
        if isinstance(meta.get("config"), dict) and preset is None and config is None:
            cfg = C.from_dict(meta["config"], list(overrides))
            check_decided_by_checkpoint(meta, cfg, base)
            return cfg
    elif not (Path(base) / "config.json").is_file():
        raise CheckpointError(f"--base '{base}': neither a run or checkpoint folder of this package nor a Hugging "
                              "Face model folder (no mitigate.json, no config.json)" if Path(base).exists()
                              else f"--base '{base}' does not exist")
    elif preset is None and config is None:
        raise C.ConfigError(f"--base '{base}' is a Hugging Face folder, which records no task: name one with "
                            "--preset (e.g. sciqa-smoke) or --config")
    return C.load(config, preset, list(overrides))


def load_checkpoint(path: str | Path, cfg: C.Config, task, device):
    """(policy, task config it records or None) of a package checkpoint or a Hugging Face folder."""
    if is_package_checkpoint(path):
        policy, meta = load_policy(path, device)
        return policy, checkpoint_settings(meta)["task"]  # current defaults filled in for older records
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint not found: '{path}' does not exist")
    if not (Path(path) / "config.json").is_file():
        raise CheckpointError(f"'{path}' is neither a checkpoint of this package (mitigate.json) nor a Hugging Face "
                              "model folder (config.json)")
    model = {k: v for k, v in C.to_dict(cfg.model).items() if k in HFConfig.__dataclass_fields__}
    return HFPolicy.build(C.build(HFConfig, {**model, "name": "hf", "path": str(path)}, "model"), task), None


def vocabulary(policy) -> int | dict:
    tokenizer = getattr(policy, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer.get_vocab()
    return int(policy.model.get_input_embeddings().weight.shape[0])


def audit(base: str | Path, models: list[str | Path], out: str | Path, names: list[str] | None = None,
          preset: str | None = None, config: str | None = None, overrides: list[str] = (), seed: int = 0,
          k: int | None = None, overwrite: bool = False, quiet: bool = False) -> dict:
    """Evaluate `base` and every one of `models` with one evaluation stream; write OUT/audit.json and
    OUT/audit.md; return the summary. `names`: the models' row names (default: their folder names).
    `k`: the pass@k of the verdicts (default: the largest the samples allow)."""
    with cell_threads():
        return _audit(base, models, out, names, preset, config, overrides, seed, k, overwrite, quiet)


def _audit(base, models, out, names, preset, config, overrides, seed, k, overwrite, quiet) -> dict:
    # ---- check every input before any sampling
    if not models:
        raise C.ConfigError("mitigate audit: give at least one --model to compare with the base")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise C.ConfigError(f"the evaluation seed must be an integer in [0, 2**32), got {seed!r}")
    names = list(names) if names else [Path(m).name if Path(m).name != "checkpoint" else Path(m).parent.name
                                       for m in models]
    if len(names) != len(models):
        raise C.ConfigError(f"--name given {len(names)} times for {len(models)} --model; give one per model or none")
    if BASE in names or len(set(names)) != len(names):
        raise C.ConfigError(f"model names must be distinct and not '{BASE}', got {names}; set them with --name")
    cfg = audit_config(base, preset, config, overrides)
    n = cfg.eval.samples
    if k is not None and not 1 <= k <= n:
        raise C.ConfigError(f"--k {k} is outside 1..{n}: pass@k needs k <= the samples per prompt (eval.samples = {n})")
    out = Path(out)
    plan = plan_run(out, overwrite, inputs=[base, *models])  # refused here, before any sampling
    task = make_task(cfg.task)
    text_diversity(task, cfg.eval)
    device = device_for(cfg.device)
    policies = {}
    for name, path in [(BASE, base), *zip(names, models)]:
        policy, recorded_task = load_checkpoint(path, cfg, task, device)
        if recorded_task is not None and recorded_task != C.to_dict(cfg.task):
            raise C.ConfigError(f"'{path}' was trained on another task than the base's; an audit compares "
                                "checkpoints of one task")
        policies[name] = policy
    vocab = vocabulary(policies[BASE])
    for name, path in zip(names, models):
        if vocabulary(policies[name]) != vocab:
            raise C.ConfigError(f"'{path}' has another vocabulary than the base '{base}'; an audit compares "
                                "checkpoints that share one tokenizer")
    # ---- evaluate: one stream for every checkpoint, so the differences are paired by prompt
    t0 = time.time()
    prompts = split_prompts(task, id_split(task, cfg.eval), cfg.eval.max_prompts)
    reference = ratio_reference(policies[BASE], task, prompts, cfg.eval.batch_size)
    rows = {name: {seed: evaluate_rows(policy, task, cfg.eval, torch_stream(seed, "eval_trained"), quiet, reference)}
            for name, policy in policies.items()}
    summary_rows, _ = summarize(rows, [BASE], cfg.reproduce.n_boot, seed)
    summary = {"preset": cfg.preset, "kind": "audit", "wall_seconds": round(time.time() - t0, 1),
               "id_split": cfg.eval.id_split, "diversity_r": cfg.eval.diversity_r, "seed": seed, "samples": n,
               "checkpoints": {BASE: str(base), **{m: str(p) for m, p in zip(names, models)}},
               "methods": summary_rows}
    summary["verdicts"] = {m: verdict(summary, m, k) for m in names}
    with resumable_run(plan) as tmp:
        write_json(tmp / "audit.json", summary)
        write_text(tmp / "audit.md", audit_markdown(summary))
    return summary


def _paired(entry: dict, path: tuple) -> tuple[float, list] | None:
    node = entry.get("paired", {}).get(BASE, {})
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return (node["mean"], node["ci95"]) if isinstance(node, dict) and "mean" in node else None


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def verdict(summary: dict, name: str, k: int | None = None) -> str:
    """One paragraph in plain words: pass@1, pass@k and diversity of `name` against the base (paired
    95% intervals), and whether it narrowed."""
    m, b = summary["methods"][name], summary["methods"][BASE]
    ks = sorted(m["id"]["pass_at_k"], key=int)
    kk = str(k) if k is not None else ks[-1]
    parts, fell, rose = [], [], False
    p1 = _paired(m, ("id", "pass_at_k", "1"))
    pk = _paired(m, ("id", "pass_at_k", kk))
    if p1:
        parts.append(f"pass@1 {_signed(p1[0])} [{p1[1][0]:+.3f}, {p1[1][1]:+.3f}]")
        rose = p1[1][0] > 0
    if pk and kk != "1":
        parts.append(f"pass@{kk} {_signed(pk[0])} [{pk[1][0]:+.3f}, {pk[1][1]:+.3f}]")
        if pk[1][1] < 0:
            fell.append(f"pass@{kk}")
    for split in m.get("ood", {}):
        po = _paired(m, ("ood", split, "pass_at_k", kk))
        if po:
            parts.append(f"OOD {split} pass@{kk} {_signed(po[0])} [{po[1][0]:+.3f}, {po[1][1]:+.3f}]")
            if po[1][1] < 0:
                fell.append(f"OOD {split} pass@{kk}")
    for key, words in DIVERSITY_KEYS:
        d = _paired(m, ("id", key))
        if d is None or not isinstance(b["id"].get(key), (int, float)) or not b["id"][key]:
            continue
        rel = d[0] / b["id"][key]
        words = words.format(r=summary.get("diversity_r"))
        parts.append(f"{abs(rel):.0%} {'fewer' if rel < 0 else 'more'} {words} ({_signed(d[0])} "
                     f"[{d[1][0]:+.3f}, {d[1][1]:+.3f}])")
        if d[1][1] < 0:
            fell.append(words)
        break  # the first measure the task offers (accuracy-free first)
    text = f"{name} against the base: " + ", ".join(parts) + "."
    if fell and rose:
        return text + (f" Narrowed: pass@1 rose while {', '.join(fell)} fell (95% intervals exclude 0), the "
                       "pattern of a sharpened or tilted distribution.")
    if fell:
        return text + f" Narrowed: {', '.join(fell)} fell (95% intervals exclude 0)."
    return text + (f" No narrowing detected with n = {summary['samples']} samples per prompt: no pass@k or "
                   "diversity interval lies below 0.")


def audit_markdown(summary: dict) -> str:
    lines = [f"# mitigate audit — {len(summary['verdicts'])} model(s) against the base", "",
             f"Checkpoints (evaluation seed {summary['seed']}, n = {summary['samples']} per prompt; paired "
             "intervals over a bootstrap of prompts, one evaluation per checkpoint):", ""]
    lines += [f"- `{m}`: `{p}`" for m, p in summary["checkpoints"].items()] + ["", "## Verdicts", ""]
    lines += [v + "\n" for v in summary["verdicts"].values()]
    body = report_markdown({**summary, "budget": {}})
    return "\n".join(lines) + "\n" + body.split("\n", 2)[2]
