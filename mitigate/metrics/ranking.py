"""Rank methods on ID pass@k and on pass@k of every OOD split the task defines (numbers only;
`analysis/` draws the Pareto plot).

Rules: values are compared at the precision the tables print (3 decimals), so methods that print
the same share a rank; a column where every method's interval lies above `saturated` (0.99) is not
ranked (nothing separates the methods there); the mean rank carries a bootstrap interval when the
summary's crossed-bootstrap replicates are given; ID pass@1 and ID concepts (diversity) are also
ranked on their own, because a mean rank mixes accuracy with diversity proxies.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

ID_KS = (1, 8, 64)  # ranked on ID; each OOD split is ranked on pass@1 and pass@64
OOD_KS = (1, 64)
DECIMALS = 3
SATURATED = 0.99


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


def saturated_columns(summary: dict) -> list[str]:
    """Labels of the columns where every method's interval lies above SATURATED."""
    return [label for label, split, k in criteria(summary)
            if all(value(m, split, k)[1][0] > SATURATED for m in summary["methods"].values())]


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank 1 = best along the last axis; equal printed values share the mean rank."""
    return rankdata(-np.round(values, DECIMALS), method="average", axis=-1)


def rank_methods(summary: dict, replicates: dict | None = None) -> dict:
    """Per ranked criterion, rank 1 = best; `mean rank` over the ranked criteria (with `mean rank
    ci95` from the replicates when given); `pass@1 rank` and `diversity rank` (ID concepts among
    r correct samples, accuracy-free, when measured; else among all correct samples) on their own."""
    names = list(summary["methods"])
    skip = set(saturated_columns(summary))
    cols = [c for c in criteria(summary) if c[0] not in skip]
    table = {n: {} for n in names}
    for label, split, k in cols:
        for n, r in zip(names, _ranks(np.array([value(summary["methods"][n], split, k)[0] for n in names]))):
            table[n][label] = float(r)
    for n, r in zip(names, _ranks(np.array([summary["methods"][n]["id"]["pass_at_k"]["1"] for n in names]))):
        table[n]["pass@1 rank"] = float(r)
    diversity = "concepts_at_r" if all("concepts_at_r" in summary["methods"][n]["id"] for n in names) else "concepts"
    concepts = np.array([summary["methods"][n]["id"].get(diversity, np.nan) for n in names], dtype=float)
    for n, r in zip(names, _ranks(np.nan_to_num(concepts, nan=-np.inf))):
        table[n]["diversity rank"] = float(r)
    for n in names:
        table[n]["mean rank"] = float(np.mean([table[n][c] for c, _, _ in cols])) if cols else float("nan")
    if replicates is not None and cols:
        keys, reps = replicates["keys"], replicates["replicates"]
        per_col = []
        for _, split, k in cols:
            j = keys[split].index(("pass_at_k", k))
            per_col.append(_ranks(np.stack([reps[split][n][:, j] for n in names], 1)))  # [n_boot, methods]
        mean_rank = np.mean(per_col, 0)
        for i, n in enumerate(names):
            table[n]["mean rank ci95"] = [float(np.quantile(mean_rank[:, i], 0.025)),
                                          float(np.quantile(mean_rank[:, i], 0.975))]
    return dict(sorted(table.items(), key=lambda kv: kv[1]["mean rank"]))
