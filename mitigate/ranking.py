"""Rank methods on ID pass@k and OOD accuracy; Pareto plot of ID pass@1 vs OOD-blocked pass@64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import rankdata

# (split, k) ranked on; with fewer than k samples per prompt the largest measured k stands in
CRITERIA = (("id", 1), ("id", 8), ("id", 64), ("blocked", 1), ("blocked", 64), ("rare", 1), ("rare", 64))
SPLIT_LABELS = {"id": "ID", "blocked": "blocked", "rare": "rare"}


def _pass_at_k(m: dict, split: str) -> tuple[dict, dict]:
    if split == "id":
        return m["id"]["pass_at_k"], m["ci95"]["id"]["pass_at_k"]
    return m["ood"][split]["pass_at_k"], m["ci95"]["ood"][split]["pass_at_k"]


def criteria(summary: dict) -> list[tuple[str, str, str]]:
    """(label, split, k) with k capped at the largest k every method measured, named as measured:
    a smoke run with n = 16 ranks on "ID pass@16", never on a column called pass@64."""
    out = []
    for split, k in CRITERIA:
        largest = min(max(int(j) for j in _pass_at_k(m, split)[0]) for m in summary["methods"].values())
        k = min(k, largest)
        out.append((f"{SPLIT_LABELS[split]} pass@{k}", split, str(k)))
    return list(dict.fromkeys(out))  # n < 8 would repeat a column


def _value(m: dict, split: str, k: str):
    pk, ci = _pass_at_k(m, split)
    return pk[k], ci[k]


def rank_methods(summary: dict) -> dict:
    """Per criterion, rank 1 = best (ties share the mean rank); mean rank across criteria."""
    names = list(summary["methods"])
    table = {n: {} for n in names}
    cols = criteria(summary)
    for label, split, k in cols:
        vals = np.array([_value(summary["methods"][n], split, k)[0] for n in names])
        ranks = rankdata(-vals, method="average")
        for n, r in zip(names, ranks):
            table[n][label] = float(r)
    for n in names:
        table[n]["mean rank"] = float(np.mean([table[n][c] for c, _, _ in cols]))
    return dict(sorted(table.items(), key=lambda kv: kv[1]["mean rank"]))


def ranking_table(summary: dict) -> str:
    ranking = summary["ranking"]
    cols = criteria(summary)
    head = ["rank", "method", "mean rank"] + [c for c, _, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, (name, r) in enumerate(ranking.items(), 1):
        cells = [str(i), name, f"{r['mean rank']:.2f}"]
        for label, split, k in cols:
            mean, ci = _value(summary["methods"][name], split, k)
            cells.append(f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] ({r[label]:g})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k_blocked = max((k for _, split, k in criteria(summary) if split == "blocked"), key=int)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for name, m in summary["methods"].items():
        (x, xci), (y, yci) = _value(m, "id", "1"), _value(m, "blocked", k_blocked)
        ax.errorbar(x, y, xerr=[[x - xci[0]], [xci[1] - x]], yerr=[[y - yci[0]], [yci[1] - y]], fmt="o",
                    capsize=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("ID pass@1")
    ax.set_ylabel(f"OOD-blocked pass@{k_blocked}")
    ax.set_title("pass@1 vs. diversity (95% intervals)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
