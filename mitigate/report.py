"""summary.json -> summary.md (tables) and pass@k plots (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mitigate.runs import write_text  # noqa: E402


def _fmt(mean, ci=None) -> str:
    if ci is None or ci[0] != ci[0]:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main_table(summary: dict) -> str:
    first = next(iter(summary["methods"].values()))
    ks = [k for k in ("1", "8", "64") if k in first["id"]["pass_at_k"]]
    kmax = {s: max(first["ood"][s]["pass_at_k"], key=int) for s in ("blocked", "rare")}  # < 64 if n < 64
    head = ["method", "seeds"] + [f"ID pass@{k}" for k in ks] + [
        "distinct correct", "concepts", "concept entropy", "top-concept share", "token entropy",
        "blocked pass@1", f"blocked pass@{kmax['blocked']}", "rare pass@1", f"rare pass@{kmax['rare']}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["methods"].items():
        idm, ci = m["id"], m["ci95"]["id"]
        cells = [name, str(len(m["seeds"]))]
        cells += [_fmt(idm["pass_at_k"][k], ci["pass_at_k"][k]) for k in ks]
        cells += [_fmt(idm[k], ci[k]) for k in ("distinct_correct", "concepts", "concept_entropy",
                                                  "top_concept_share", "token_entropy")]
        for split in ("blocked", "rare"):
            pk, pci = m["ood"][split]["pass_at_k"], m["ci95"]["ood"][split]["pass_at_k"]
            kmax = max(pk, key=int)
            cells += [_fmt(pk["1"], pci["1"]), _fmt(pk[kmax], pci[kmax])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pass_at_k(summary: dict, path: Path) -> None:
    panels = [("ID", lambda m: (m["id"]["pass_at_k"], m["ci95"]["id"]["pass_at_k"]))]
    for split in ("blocked", "rare"):
        panels.append((f"OOD {split}", lambda m, s=split: (m["ood"][s]["pass_at_k"],
                                                           m["ci95"]["ood"][s]["pass_at_k"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True)
    for ax, (title, get) in zip(axes, panels):
        for name, m in summary["methods"].items():
            pk, ci = get(m)
            ks = sorted(pk, key=int)
            x = [int(k) for k in ks]
            line = ax.plot(x, [pk[k] for k in ks], marker="o", ms=3, label=name)[0]
            ax.fill_between(x, [ci[k][0] for k in ks], [ci[k][1] for k in ks], color=line.get_color(), alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pass@k")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def write_report(summary: dict, out: Path) -> None:
    out = Path(out)
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
        from mitigate.ranking import ranking_table

        parts += ["## Ranking", "", ranking_table(summary), "", "![pareto](pareto.png)", ""]
    parts += ["![pass@k](pass_at_k.png)", ""]
    plot_pass_at_k(summary, out / "pass_at_k.png")
    write_text(out / "summary.md", "\n".join(parts))


def combine_summaries(paths: list[str | Path]) -> dict:
    """Merge the methods of several summary.json files (e.g. ablation sweeps sharing one base)
    into one summary for a joint table. Methods keep their names; `base` is taken from the first
    file; any other repeated name is an error. Only summaries on the same ID split combine."""
    import json

    from mitigate.config import ConfigError

    merged: dict = {"methods": {}, "sources": [str(p) for p in paths]}
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "summary.json"
        if not p.is_file():
            raise ConfigError(f"no summary.json at '{p}'")
        s = json.loads(p.read_text())
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


def write_combined(paths: list[str | Path], out: Path) -> Path:
    """`mitigate table`: one report (tables with intervals, ranking, Pareto and pass@k plots)
    over the methods of several reproduce/ablation folders."""
    from mitigate.ranking import plot_pareto, rank_methods
    from mitigate.runs import run_folder, write_json

    summary = combine_summaries(paths)
    with run_folder(out, overwrite=True) as tmp:
        summary["ranking"] = rank_methods(summary)
        plot_pareto(summary, tmp / "pareto.png")
        write_json(tmp / "summary.json", summary)
        write_report(summary, tmp)
    return Path(out)
