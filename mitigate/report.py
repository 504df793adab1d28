"""summary.json -> summary.md (Markdown tables), and `mitigate table` over several run folders.

Text only: figures are drawn by `analysis/` from the same JSON (`python -m analysis figures DIR`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mitigate.core.fields import ConfigError
from mitigate.core.io import InputError, check_output, nan_for_null, read_json, run_folder, write_json, write_text
from mitigate.metrics.ranking import criteria, ood_splits, rank_methods, saturated_columns, value
from mitigate.metrics.statistics import flat_keys


def _fmt(mean, ci=None) -> str:
    if mean is None or mean != mean:
        return "n/a"
    if ci is None or ci[0] != ci[0]:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _diff(d: dict) -> str:
    """A paired difference; marked * when its interval excludes zero."""
    lo, hi = d["ci95"]
    star = "*" if (lo > 0 or hi < 0) else ""
    return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def _columns(summary: dict) -> list[tuple[str, tuple]]:
    """(header, path into a method's split block) of the main table."""
    first = next(iter(summary["methods"].values()))
    ks = [k for k in ("1", "8", "64") if k in first["id"]["pass_at_k"]]
    cols = [(f"ID pass@{k}", ("id", "pass_at_k", k)) for k in ks]
    r = summary.get("diversity_r")  # accuracy-free diversity first: it does not grow with accuracy
    at_r = (("concepts", "concepts_at_r"), ("distinct correct", "distinct_correct_at_r"))
    cols += [(f"{label} among {r} correct", ("id", key)) for label, key in at_r if key in first["id"]]
    cols += [(label, ("id", key)) for label, key in (("distinct correct", "distinct_correct"), ("concepts", "concepts"),
                                                      ("concept entropy", "concept_entropy"),
                                                      ("top-concept share", "top_concept_share"),
                                                      ("token entropy", "token_entropy"))]
    # text tasks: diversity of the correct answers as text (absent from the graph task's summaries)
    cols += [(f"{kind} {label}", ("id", f"{kind}_{key}")) for kind in ("semantic", "lexical")
             for label, key in (("cosine distance", "cosine_distance"), ("Vendi", "vendi"), ("clusters", "clusters"))
             if f"{kind}_{key}" in first["id"]]
    # text tasks: expressed uncertainty and length of the responses (all responses, not only correct)
    cols += [(label, ("id", key)) for label, key in (("uncertainty markers /100 words", "uncertainty_rate"),
                                                     ("responses with a marker", "uncertainty_share"),
                                                     ("response words", "response_words"))
             if key in first["id"]]
    for s in ood_splits(summary):
        top = max(first["ood"][s]["pass_at_k"], key=int)  # < 64 if n < 64
        cols += [(f"{s} pass@1", ("ood", s, "pass_at_k", "1")), (f"{s} pass@{top}", ("ood", s, "pass_at_k", top))]
    for s in first.get("strata", {}):  # named subsets of the ID prompts (e.g. the hard pairs)
        top = max(first["strata"][s]["pass_at_k"], key=int)
        cols += [(f"{s} pass@1", ("strata", s, "pass_at_k", "1")), (f"{s} pass@{top}", ("strata", s, "pass_at_k", top))]
    return cols


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def main_table(summary: dict) -> str:
    cols = _columns(summary)
    lines = ["| method | seeds | " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for name, m in summary["methods"].items():
        cells = [name, str(len(m["seeds"]))] + [_fmt(_get(m, p), _get(m["ci95"], p)) for _, p in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(summary: dict, against: str) -> str:
    """Every method minus `against`, per metric, with paired 95% intervals (* = excludes zero)."""
    cols = _columns(summary)
    rows = [(n, m["paired"][against]) for n, m in summary["methods"].items() if against in m.get("paired", {})]
    if not rows:
        return ""
    lines = ["| method | " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, d in rows:
        lines.append("| " + " | ".join([name] + [_diff(_get(d, p)) for _, p in cols]) + " |")
    return "\n".join(lines)


BUDGET_FIELDS = ("rollouts", "verifier_calls", "reference_generations", "forward_tokens", "backward_tokens",
                 "wall_seconds")


def budget_table(summary: dict) -> str:
    """What each method spent per training run (mean over seeds)."""
    rows = [(n, m["budget"]) for n, m in summary["methods"].items() if m.get("budget")]
    if not rows:
        return ""
    lines = ["| method | " + " | ".join(f.replace("_", " ") for f in BUDGET_FIELDS) + " |",
             "|" + "---|" * (len(BUDGET_FIELDS) + 1)]
    for name, b in rows:
        lines.append("| " + " | ".join([name] + [f"{b.get(f, 0):,}" if f != "wall_seconds" else f"{b.get(f, 0):.1f}"
                                                 for f in BUDGET_FIELDS]) + " |")
    return "\n".join(lines)


def ranking_table(summary: dict) -> str:
    ranking = summary["ranking"]
    skip = set(summary.get("not_ranked_saturated", []))
    cols = [c for c in criteria(summary) if c[0] not in skip]
    head = ["rank", "method", "mean rank", "pass@1 rank", "diversity rank"] + [c for c, _, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    printed = {name: f"{r['mean rank']:.2f}" for name, r in ranking.items()}
    for name, r in ranking.items():
        ci = r.get("mean rank ci95")
        place = 1 + sum(float(v) < float(printed[name]) for v in printed.values())  # ties share a place: 1, 2, 2, 4
        cells = [str(place), name, f"{r['mean rank']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
                 f"{r['pass@1 rank']:g}", f"{r['diversity rank']:g}"]
        for label, split, k in cols:
            mean, c = value(summary["methods"][name], split, k)
            cells.append(f"{mean:.3f} ({r[label]:g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tradeoff_table(summary: dict) -> str:
    """How far each method lies above each trade-off curve at its own ID pass@1 (median and 95%
    interval over crossed-bootstrap replicates; * = interval excludes zero)."""
    gaps = summary["tradeoff"]["gaps_above"]
    lines = ["| method | curve | metric | gap above curve | replicates outside the curve's range |",
             "|---|---|---|---|---|"]
    for name, by_curve in gaps.items():
        for curve, by_metric in by_curve.items():
            for metric, g in by_metric.items():
                lines.append(f"| {name} | {curve} | {metric} | {_gap(g)} | {g['outside_share']:.2f} |")
    return "\n".join(lines)


def _gap(g: dict) -> str:
    """A gap above a curve (median [interval]); * when the interval excludes zero and fewer than 5% of
    replicates fall outside the curve's range."""
    lo, hi = g["ci95"]
    median = g["median"]
    med = "n/a" if median is None or median != median else f"{median:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return med + ("*" if (lo == lo and (lo > 0 or hi < 0) and g["outside_share"] < 0.05) else "")


def primary_table(summary: dict) -> str:
    """The pre-registered primary endpoints: paired difference, interval, one-sided and Holm p-values."""
    lines = ["| endpoint | comparison | split | metric | claim | difference [95% CI] | p | Holm p | holds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in summary["primary"]["tests"]:
        claim = f"{'<' if t['direction'] == 'less' else '>'} {t['margin']:+g}"
        lo, hi = t["ci95"]
        lines.append(f"| {t['name']} | {t['method']} − {t['reference']} | {t['split']} | {t['metric']} | {claim} | "
                     f"{t['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {t['p_value']:.4f} | {t['p_holm']:.4f} | "
                     f"{'yes' if t['holds'] else 'no'} |")
    return "\n".join(lines)


def ratio_table(summary: dict) -> str:
    """The ratio test per method, with paired differences of the slope against each reference."""
    block = summary["ratio_test"]["methods"]
    refs = [r for r in ("grpo", "sdsd") if r in block]
    head = ["method", "slope on pcmi", "partial slope on pcmi (given log p0)", "sharpening coefficient",
            "KL(pi(.|C) || base(.|C))"] + [f"{k} − {r}" for r in refs for k in ("slope", "partial slope")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in block.items():
        cells = [name, _fmt(m["slope"], m["ci95"]), _fmt(m.get("partial_slope"), m.get("partial_ci95")),
                 _fmt(m.get("sharpening"), m.get("sharpening_ci95")), _fmt(m["kl_correct"], m["kl_ci95"])]
        cells += [_diff(m["paired"][r][k]) if r in m["paired"] and k in m["paired"][r] else ""
                  for r in refs for k in ("slope", "partial_slope")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sharpening_table(summary: dict) -> str:
    """How far each trained method lies above the sharpening curve (the base at lower temperatures)."""
    lines = ["| method | metric | gap above the sharpening curve | replicates outside its range |", "|---|---|---|---|"]
    for name, by_curve in summary["sharpening"]["gaps_above"].items():
        for metric, g in by_curve["sharpening"].items():
            lines.append(f"| {name} | {metric} | {_gap(g)} | {g['outside_share']:.2f} |")
    return "\n".join(lines)


def per_task_table(summary: dict) -> str:
    """A pooled summary's per-task-seed results: the main columns of every method on each task seed."""
    first = next(iter(summary["methods"].values()))
    cols = [(h, p) for h, p in _columns(summary) if p[-1] in ("1", "concepts_at_r", "concepts") or
            (p[0] == "ood" and p[-1] == max(first["ood"][p[1]]["pass_at_k"], key=int))]
    lines = ["| task seed | method | " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for name, m in summary["methods"].items():
        for t in m["per_task"]:
            lines.append(f"| {t['task_seed']} | {name} | " + " | ".join(_fmt(_get(t, p), _get(t["ci95"], p))
                                                                        for _, p in cols) + " |")
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    b = summary.get("budget", {})
    title = "combined table" if "sources" in summary else "reproduce"
    parts = [f"# mitigate {title} — preset `{summary['preset']}`", ""]
    if "sources" in summary:
        parts += ["Sources: " + ", ".join(f"`{s}`" for s in summary["sources"]), ""]
    if "pooled_task_seeds" in summary:
        parts += [f"Pooled over task seeds {', '.join(map(str, summary['pooled_task_seeds']))}: a third bootstrap "
                  "level resamples the task seeds (each its own graph, splits and base), so the intervals include "
                  "task-to-task variation; per-task results are at the end.", ""]
    parts += [f"Wall time: {summary['wall_seconds']:.0f} s. Means over seeds of means over prompts; 95% intervals "
              "from a crossed bootstrap (one prompt resample shared by every method and seed, seeds resampled). "
              "Diversity is measured among correct samples. "
              + (f"ID columns are on the `{summary.get('id_split', 'id_test')}` pairs."
                 if summary.get("id_split", "id_test") else "The sources' ID columns are on different splits (below)."),
              ""]
    if "evaluation_by_source" in summary:
        parts += ["**The sources were evaluated with different settings** (`mitigate table --shared-only`): only "
                  "the metrics every method reports are shown, and numbers across sources measure different "
                  "things where these settings differ:", ""]
        parts += [f"- `{src}`: " + ", ".join(f"{k} = {v}" for k, v in by.items())
                  for src, by in summary["evaluation_by_source"].items()] + [""]
    if b:
        parts += [f"Shared settings (all trained methods): {b.get('steps')} steps x {b.get('prompts_per_step')} "
                  f"prompts x {b.get('group_size')} rollouts, lr {b.get('lr')}, KL leash {b.get('kl_coef')} "
                  f"({b.get('kl_estimator', 'k3')}); evaluation n = {b.get('eval_samples') or 'per source (above)'}.",
                  ""]
        for m, o in b.get("objectives", {}).items():
            regs = b.get("regularizers", {}).get(m) or []
            parts.append(f"- `{m}`: {o}" + (f" + {regs}" if regs else ""))
        parts.append("")
    if "primary" in summary:
        p = summary["primary"]
        parts += ["## Primary endpoints", "", f"One family, Holm-corrected at alpha = {p['alpha']:g}: a claim holds "
                  "when its Holm-adjusted one-sided bootstrap p-value is at most alpha. Every other number on this "
                  "page is exploratory.", "", primary_table(summary), ""]
    parts += ["## pass@k and diversity", "", main_table(summary), ""]
    for ref in ("grpo", "sdsd"):
        table = paired_table(summary, ref)
        if table:
            parts += [f"## Paired differences: method minus `{ref}`", "",
                      "Same prompts, crossed bootstrap; * marks an interval that excludes zero.", "", table, ""]
    if "ratio_test" in summary:
        rt = summary["ratio_test"]
        parts += ["## Ratio test", "", f"Over {rt['n_prompts']} ID prompts with at least two correct outputs "
                  f"({rt['n_pairs']} pairs): the slope of the change of log p(y_i)/p(y_j) from the base to the model "
                  "on pcmi_bar(y_i) − pcmi_bar(y_j) (pointwise CMI with a demonstration drawn from the base's "
                  "correct distribution). 0: the base's ratios among correct outputs are kept (the RL optimum); "
                  "1: SDSD's fixed point. The plain slope also rises with mere sharpening (pcmi_bar correlates "
                  "with log p0); the partial slope controls for it (regressors: pcmi difference and base log-prob "
                  "difference), and the sharpening coefficient is the second regressor's. KL is between the two "
                  "distributions restricted to the correct set.", "",
                  ratio_table(summary), ""]
    if "sharpening" in summary:
        sh = summary["sharpening"]
        parts += ["## Sharpening control", "", "The base sampled at temperatures "
                  + ", ".join(f"{t:g}" for t in sh["temperatures"]) + " (no training) draws a curve; gap = a method's "
                  "metric minus the curve's at the method's ID pass@1 (negative: narrower than sharpening the base "
                  "to the same accuracy). * = the interval excludes zero and fewer than 5% of replicates fall "
                  "outside the curve's range.", "", sharpening_table(summary), ""]
    table = budget_table(summary)
    if table:
        parts += ["## Budget per training run", "", "Counted where the work happens (every sample, scoring "
                  "forward and verifier call of the run); evaluation is not included.", "", table, ""]
    if "tradeoff" in summary:
        parts += ["## Against the trade-off curves", "",
                  "Curves: the base, then each curve method's weights interpolated with the base (alpha = "
                  + ", ".join(f"{p['alpha']:g}" for p in next(iter(summary["tradeoff"]["curves"].values())))
                  + "). Gap = the method's metric minus the curve's, interpolated at the method's ID pass@1. "
                  "* = the interval excludes zero and fewer than 5% of replicates fall outside the curve's range.",
                  "", tradeoff_table(summary), ""]
    if "base_demo_bias" in summary:
        d = summary["base_demo_bias"]
        parts += ["## Demonstration bias of the base model", "",
                  f"P(sample correct and in the demonstration's concept): with demonstration "
                  f"{d['share_with_demo']:.3f}, without {d['share_without_demo']:.3f}, lift {d['lift']:.3f} "
                  f"({d['n_prompts']} ID prompts, {d['n_demos']} demos x {d['samples']} samples)."]
        if "pass_at_1_with_demo" in d:  # summaries written before this field existed lack it
            parts += ["", f"Teacher headroom: pass@1 with a correct demonstration in context "
                          f"{d['pass_at_1_with_demo']:.3f}, without {d['pass_at_1_without_demo']:.3f}."]
        parts += [""]
    base = summary["methods"].get("base", {}).get("label_shares", {}).get("id")
    if base:
        parts += ["## Labels the base model prefers", "",
                  "Share of each label (graph: concept) among the base model's correct ID samples: "
                  + ", ".join(f"{k}: {v:.3f}" for k, v in sorted(base.items(), key=lambda kv: -kv[1])) + ".", ""]
    if "ranking" in summary:
        skip = summary.get("not_ranked_saturated", [])
        parts += ["## Ranking", "", "Values print at 3 decimals and equal printed values share a rank; the mean "
                  "rank's interval is over crossed-bootstrap replicates."
                  + (f" Not ranked (every method's interval above 0.99): {', '.join(skip)}." if skip else ""),
                  "", ranking_table(summary), ""]
    if "pooled_task_seeds" in summary:
        parts += ["## Per task seed", "", per_task_table(summary), ""]
    # named, not linked: this file is written before any figure exists (`mitigate reproduce` draws none)
    drawn = ["pass_at_k"] + (["pareto"] if "ranking" in summary else [])
    parts += ["## Figures", "", "Not drawn by this command: `mitigate-analysis figures <this folder>` (`make "
              "reproduce` runs it) writes " + ", ".join(f"`{f}.png`" for f in drawn) + " and the others its "
              "data supports beside this file, each also as PDF.", ""]
    return "\n".join(parts)


def write_report(summary: dict, out: Path) -> None:
    write_text(Path(out) / "summary.md", report_markdown(summary))


def summary_file(path: str | Path) -> Path:
    """The summary.json of a run folder, or the file itself."""
    p = Path(path)
    return p / "summary.json" if p.is_dir() else p


def read_summary(path: str | Path) -> dict:
    """A run folder's summary.json (or the file given), checked to be one; a null, a number that was
    not finite, is read back as NaN."""
    file = summary_file(path)
    if not file.is_file():
        raise ConfigError(f"no summary.json at '{file}'" + ("" if file.parent.is_dir() else
                                                            f" ('{file.parent}' is not a folder)"))
    summary = read_json(file, "summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict) or "preset" not in summary:
        raise InputError(f"'{file}' is not a summary written by mitigate reproduce, sweep or table (it has no "
                         "'preset' and 'methods'); give reproduce or sweep output folders or their summary.json")
    return nan_for_null(summary)


# Evaluation settings that change no number (how many sequences share one forward pass).
NUMBER_NEUTRAL_EVAL = ("batch_size",)


def evaluation_settings(path: str | Path, summary: dict) -> dict:
    """The settings a summary's numbers depend on, as dotted keys: what summary.json records
    (evaluation n, ID split, r) and, when the run folder's config.yaml is there, the whole `eval`
    section and the task. A combined table records the settings its sources shared."""
    settings = {"eval.samples": summary.get("budget", {}).get("eval_samples"),
                "eval.id_split": summary.get("id_split", "id_test"), "eval.diversity_r": summary.get("diversity_r"),
                **summary.get("evaluation", {})}
    config = summary_file(path).parent / "config.yaml"
    if config.is_file():
        try:
            resolved = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"'{config}' cannot be read as YAML ({e})") from e
        if isinstance(resolved, dict):
            settings.update({f"eval.{k}": v for k, v in resolved.get("eval", {}).items()
                             if k not in NUMBER_NEUTRAL_EVAL})
            settings.update({f"task.{k}": v for k, v in resolved.get("task", {}).items()})
    return {k: v for k, v in settings.items() if v is not None}


def differing_settings(settings: dict[str, dict]) -> dict[str, dict]:
    """{key: {source: value}} for every setting known for every source whose values differ."""
    known = set.intersection(*(set(s) for s in settings.values()))
    return {k: {src: s[k] for src, s in settings.items()} for k in sorted(known)
            if len({json.dumps(s[k], sort_keys=True) for s in settings.values()}) > 1}


def shared_metrics(blocks: list[dict]) -> set[tuple]:
    """The metric paths (split, ..., metric) every method's block reports."""
    return set.intersection(*(set(flat_keys({k: b[k] for k in ("id", "ood", "strata") if k in b})) for b in blocks))


def only_paths(tree: dict, paths: set[tuple], prefix: tuple = ()) -> dict:
    """The metric tree `tree` (at `prefix`) without the leaves outside `paths`; other keys kept."""
    out = {}
    for k, v in tree.items():
        here = prefix + (k,)
        if here in paths or (not prefix and k not in ("id", "ood", "strata")):
            out[k] = v  # a metric (a paired one is {mean, ci95}), or what is not a metric tree
        elif isinstance(v, dict) and any(p[:len(here)] == here for p in paths):
            out[k] = only_paths(v, paths, here)
    return out


def only_shared(method: dict, paths: set[tuple]) -> dict:
    """A method's summary entry reduced to the metrics every combined method reports."""
    out = only_paths(method, paths)
    out["ci95"] = only_paths(method["ci95"], paths)
    out["paired"] = {r: only_paths(d, paths) for r, d in method.get("paired", {}).items()}
    if "per_seed" in method:
        out["per_seed"] = [only_paths(s, paths) for s in method["per_seed"]]
    return out


def combine_summaries(paths: list[str | Path], shared_only: bool = False) -> dict:
    """Merge the methods of several summary.json files (e.g. ablation sweeps sharing one base)
    into one summary for a joint table. Methods keep their names; `base` is taken from the first
    file; any other repeated name is an error. Summaries evaluated with different settings
    (`evaluation_settings`: n, temperature, ID split, prompts, task, ...) are refused, naming
    them, unless `shared_only`: then only the metrics every method reports are kept, and the
    differing settings are recorded per source (`evaluation_by_source`) and printed."""
    merged: dict = {"methods": {}, "sources": [str(p) for p in paths]}
    summaries = [read_summary(p) for p in paths]
    settings = {str(p): evaluation_settings(p, s) for p, s in zip(paths, summaries)}
    differ = differing_settings(settings)
    if differ and not shared_only:
        shown = "; ".join(f"{k}: " + ", ".join(f"{v!r} in '{src}'" for src, v in by.items())
                          for k, by in differ.items())
        pool = "; folders that differ only in task.seed are pooled with --pool-tasks" if set(differ) == {"task.seed"} \
            else ""
        raise ConfigError(f"the summaries were evaluated with different settings ({shown}), so their numbers do not "
                          "compare; evaluate them alike, or pass --shared-only to show only the metrics every one "
                          f"reports, with the settings of each{pool}")
    for s in summaries:
        merged.setdefault("preset", s["preset"])
        merged["wall_seconds"] = merged.get("wall_seconds", 0.0) + s.get("wall_seconds", 0.0)
        for name, m in s["methods"].items():
            if name in merged["methods"]:
                if name == "base":
                    continue
                raise ConfigError(f"method '{name}' appears in more than one summary; rename it in one config")
            merged["methods"][name] = m
        budget = s.get("budget", {})
        merged.setdefault("budget", {**budget, "objectives": {}, "regularizers": {}})
        for key in ("objectives", "regularizers"):
            merged["budget"][key].update(budget.get(key, {}))
    first = next(iter(settings.values()))
    merged["evaluation"] = {k: v for k, v in first.items()
                            if k not in differ and all(s.get(k) == v for s in settings.values())}
    merged["id_split"] = merged["evaluation"].get("eval.id_split")
    merged["diversity_r"] = merged["evaluation"].get("eval.diversity_r")
    if differ:
        merged["evaluation_by_source"] = {src: {k: by[src] for k, by in differ.items()} for src in settings}
        merged["budget"]["eval_samples"] = merged["evaluation"].get("eval.samples")
        paths_kept = shared_metrics(list(merged["methods"].values()))
        merged["methods"] = {n: only_shared(m, paths_kept) for n, m in merged["methods"].items()}
    return merged


def write_combined(paths: list[str | Path], out: str | Path, overwrite: bool = False,
                   shared_only: bool = False) -> Path:
    """`mitigate table`: one report (tables with intervals, ranking) over the methods of several
    reproduce/ablation folders (`combine_summaries`). Refuses an existing non-empty `out` (unless
    `overwrite`) and any `out` that overlaps an input; then every input is read and checked before
    anything is written."""
    check_output(out, overwrite, inputs=paths)
    summary = combine_summaries(paths, shared_only)
    with run_folder(out, overwrite, inputs=paths) as tmp:
        summary["ranking"] = rank_methods(summary)
        summary["not_ranked_saturated"] = saturated_columns(summary)
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return Path(out)
