"""Rank methods on ID pass@k and on pass@k of every OOD split the task defines (numbers only;
`analysis/` draws the Pareto plot)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

ID_KS = (1, 8, 64)  # ranked on ID; each OOD split is ranked on pass@1 and pass@64
OOD_KS = (1, 64)


def pass_at_k_of(m: dict, split: str) -> tuple[dict, dict]:
    """(means, ci95) of pass@k of one method on "id" or an OOD split."""
    if split == "id":
        return m["id"]["pass_at_k"], m["ci95"]["id"]["pass_at_k"]
    return m["ood"][split]["pass_at_k"], m["ci95"]["ood"][split]["pass_at_k"]


def ood_splits(summary: dict) -> list[str]:
    return list(next(iter(summary["methods"].values()))["ood"])


def criteria(summary: dict) -> list[tuple[str, str, str]]:
    """(label, split, k) with k capped at the largest k every method measured, named as measured:
    a smoke run with n = 16 ranks on "ID pass@16", never on a column called pass@64."""
    wanted = [("id", k) for k in ID_KS] + [(s, k) for s in ood_splits(summary) for k in OOD_KS]
    out = []
    for split, k in wanted:
        largest = min(max(int(j) for j in pass_at_k_of(m, split)[0]) for m in summary["methods"].values())
        k = min(k, largest)
        out.append((f"{'ID' if split == 'id' else split} pass@{k}", split, str(k)))
    return list(dict.fromkeys(out))  # n < 8 would repeat a column


def value(m: dict, split: str, k: str):
    pk, ci = pass_at_k_of(m, split)
    return pk[k], ci[k]


def rank_methods(summary: dict) -> dict:
    """Per criterion, rank 1 = best (ties share the mean rank); mean rank across criteria."""
    names = list(summary["methods"])
    table = {n: {} for n in names}
    cols = criteria(summary)
    for label, split, k in cols:
        vals = np.array([value(summary["methods"][n], split, k)[0] for n in names])
        ranks = rankdata(-vals, method="average")
        for n, r in zip(names, ranks):
            table[n][label] = float(r)
    for n in names:
        table[n]["mean rank"] = float(np.mean([table[n][c] for c, _, _ in cols]))
    return dict(sorted(table.items(), key=lambda kv: kv[1]["mean rank"]))
