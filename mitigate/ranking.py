"""Rank methods on ID pass@k and OOD accuracy; Pareto plot of ID pass@1 vs OOD-blocked pass@64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata

# (column label, getter of (mean, ci) from a summary method entry)
CRITERIA = (
    ("ID pass@1", ("id", "1")), ("ID pass@8", ("id", "8")), ("ID pass@64", ("id", "64")),
    ("blocked pass@1", ("blocked", "1")), ("blocked pass@64", ("blocked", "64")),
    ("rare pass@1", ("rare", "1")), ("rare pass@64", ("rare", "64")),
)


def _value(m: dict, split: str, k: str):
    if split == "id":
        pk, ci = m["id"]["pass_at_k"], m["ci95"]["id"]["pass_at_k"]
    else:
        pk, ci = m["ood"][split]["pass_at_k"], m["ci95"]["ood"][split]["pass_at_k"]
    k = k if k in pk else max(pk, key=int)
    return pk[k], ci[k]


def rank_methods(summary: dict) -> dict:
    """Per criterion, rank 1 = best (ties share the mean rank); mean rank across criteria."""
    names = list(summary["methods"])
    table = {n: {} for n in names}
    for label, (split, k) in CRITERIA:
        vals = np.array([_value(summary["methods"][n], split, k)[0] for n in names])
        ranks = rankdata(-vals, method="average")
        for n, r in zip(names, ranks):
            table[n][label] = float(r)
    for n in names:
        table[n]["mean rank"] = float(np.mean([table[n][c] for c, _ in CRITERIA]))
    return dict(sorted(table.items(), key=lambda kv: kv[1]["mean rank"]))


def ranking_table(summary: dict) -> str:
    ranking = summary["ranking"]
    head = ["rank", "method", "mean rank"] + [c for c, _ in CRITERIA]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, r) in enumerate(ranking.items(), 1):
        cells = [str(i), name, f"{r['mean rank']:.2f}"]
        for label, (split, k) in CRITERIA:
            mean, ci = _value(summary["methods"][name], split, k)
            cells.append(f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({r[label]:g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for name, m in summary["methods"].items():
        (x, xci), (y, yci) = _value(m, "id", "1"), _value(m, "blocked", "64")
        ax.errorbar(x, y, xerr=[[x - xci[0]], [xci[1] - x]], yerr=[[y - yci[0]], [yci[1] - y]], fmt="o",
                    capsize=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("ID pass@1")
    ax.set_ylabel("OOD-blocked pass@k (largest k)")
    ax.set_title("pass@1 vs. diversity (95% intervals)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
