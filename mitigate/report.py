"""summary.json -> summary.md (Markdown tables), and `mitigate table` over several run folders.

Text only: figures are drawn by `analysis/` from the same JSON (`python -m analysis figures DIR`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mitigate.core.fields import ConfigError
from mitigate.core.io import run_folder, write_json, write_text
from mitigate.metrics.ranking import criteria, ood_splits, rank_methods, value

SCALARS = ("distinct_correct", "concepts", "concept_entropy", "top_concept_share", "token_entropy")


def _fmt(mean, ci=None) -> str:
    if ci is None or ci[0] != ci[0]:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main_table(summary: dict) -> str:
    first = next(iter(summary["methods"].values()))
    ks = [k for k in ("1", "8", "64") if k in first["id"]["pass_at_k"]]
    splits = ood_splits(summary)
    kmax = {s: max(first["ood"][s]["pass_at_k"], key=int) for s in splits}  # < 64 if n < 64
    head = ["method", "seeds"] + [f"ID pass@{k}" for k in ks] + [
        "distinct correct", "concepts", "concept entropy", "top-concept share", "token entropy"]
    for s in splits:
        head += [f"{s} pass@1", f"{s} pass@{kmax[s]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        idm, ci = m["id"], m["ci95"]["id"]
        cells = [name, str(len(m["seeds"]))]
        cells += [_fmt(idm["pass_at_k"][k], ci["pass_at_k"][k]) for k in ks]
        cells += [_fmt(idm[k], ci[k]) for k in SCALARS]
        for split in splits:
            pk, pci = m["ood"][split]["pass_at_k"], m["ci95"]["ood"][split]["pass_at_k"]
            top = max(pk, key=int)
            cells += [_fmt(pk["1"], pci["1"]), _fmt(pk[top], pci[top])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_table(summary: dict) -> str:
    ranking = summary["ranking"]
    cols = criteria(summary)
    head = ["rank", "method", "mean rank"] + [c for c, _, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, r) in enumerate(ranking.items(), 1):
        cells = [str(i), name, f"{r['mean rank']:.2f}"]
        for label, split, k in cols:
            mean, ci = value(summary["methods"][name], split, k)
            cells.append(f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({r[label]:g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(summary: dict) -> str:
    b = summary.get("budget", {})
    title = "combined table" if "sources" in summary else "reproduce"
    parts = [f"# mitigate {title} — preset `{summary['preset']}`", ""]
    if "sources" in summary:
        parts += ["Sources: " + ", ".join(f"`{s}`" for s in summary["sources"]), ""]
    parts += [f"Wall time: {summary['wall_seconds']:.0f} s. Means over seeds; 95% intervals from a two-level "
              "bootstrap (seeds, then prompts). Diversity is measured among correct samples. "
              f"ID columns are on the `{summary.get('id_split', 'id_test')}` pairs.", ""]
    if b:
        parts += [f"Budget (all trained methods): {b.get('steps')} steps x {b.get('prompts_per_step')} prompts x "
                  f"{b.get('group_size')} rollouts, lr {b.get('lr')}; evaluation n = {b.get('eval_samples')}.", ""]
        for m, o in b.get("objectives", {}).items():
            regs = b.get("regularizers", {}).get(m) or []
            parts.append(f"- `{m}`: {o}" + (f" + {regs}" if regs else ""))
        parts.append("")
    parts += ["## pass@k and diversity", "", main_table(summary), ""]
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
    if "ranking" in summary:
        parts += ["## Ranking", "", ranking_table(summary), ""]
    parts += ["## Figures", "", "Drawn from summary.json by `python -m analysis figures <this folder>` "
              "(`make reproduce` runs it):", "", "![pass@k](pass_at_k.png)", ""]
    if "ranking" in summary:
        parts += ["![pareto](pareto.png)", ""]
    return "\n".join(parts)


def write_report(summary: dict, out: Path) -> None:
    write_text(Path(out) / "summary.md", report_markdown(summary))


def read_summary(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise ConfigError(f"no summary.json at '{p}'")
    return json.loads(p.read_text())


def combine_summaries(paths: list[str | Path]) -> dict:
    """Merge the methods of several summary.json files (e.g. ablation sweeps sharing one base)
    into one summary for a joint table. Methods keep their names; `base` is taken from the first
    file; any other repeated name is an error. Only summaries on the same ID split combine."""
    merged: dict = {"methods": {}, "sources": [str(p) for p in paths]}
    for p in paths:
        s = read_summary(p)
        split = s.get("id_split", "id_test")
        if merged.setdefault("id_split", split) != split:
            raise ConfigError(f"'{p}' reports ID metrics on {split}, the others on {merged['id_split']}")
        merged.setdefault("preset", s["preset"])
        merged["wall_seconds"] = merged.get("wall_seconds", 0.0) + s["wall_seconds"]
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
    return merged


def write_combined(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """`mitigate table`: one report (tables with intervals, ranking) over the methods of several
    reproduce/ablation folders. Refuses an existing non-empty `out` (unless `overwrite`) and any
    `out` that overlaps an input."""
    with run_folder(out, overwrite, inputs=paths) as tmp:
        summary = combine_summaries(paths)
        summary["ranking"] = rank_methods(summary)
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return Path(out)
