"""Per-prompt evaluation rows of many methods and seeds -> the `methods` block of summary.json:
means, crossed-bootstrap intervals, paired differences, label shares, and the bootstrap
replicates that ranking and the trade-off frontier reuse.

    rows[method][seed][split_key] = [one row per prompt]   (split_key "id" or an OOD split)

Every method and seed is evaluated on the same prompts of a split, so a replicate resamples the
prompts once for all of them (`statistics.crossed_bootstrap`); a method's seeds are resampled
once per replicate and shared across splits (the same trained models answer every split).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mitigate.metrics.ratio import RATIO_KEYS, partial_slopes, slope
from mitigate.metrics.statistics import (
    crossed_bootstrap,
    flat_keys,
    get_path,
    percentile_interval,
    point_estimate,
    seed_resamples,
    set_path,
)
from mitigate.metrics.uncertainty import UNCERTAINTY_KEYS

# per-prompt scalars reported beside pass@k (diversity is measured among correct samples); a row
# reports only the keys it has (text diversity: tasks with completion texts, `metrics.semantic`; the
# uncertainty markers and response length of all responses: tasks that offer a marker list,
# `metrics.uncertainty`)
TEXT_DIVERSITY_KEYS = tuple(f"{kind}_{m}" for kind in ("semantic", "lexical")
                            for m in ("cosine_distance", "vendi", "clusters"))
# accuracy-free diversity (among r correct samples, `diversity.distinct_among`) and the ratio test's
# per-prompt sums (`metrics.ratio`): present when the evaluation measured them
SCALARS = ("distinct_correct", "concepts", "concept_entropy", "top_concept_share", "token_entropy",
           *TEXT_DIVERSITY_KEYS, *UNCERTAINTY_KEYS, "concepts_at_r", "distinct_correct_at_r", *RATIO_KEYS)


def metric_keys(row: dict) -> list[tuple]:
    """The reported metrics of a row, as paths: ("pass_at_k", k) for every k, then SCALARS."""
    return [k for k in flat_keys(row) if k[0] == "pass_at_k"] + [(s,) for s in SCALARS if s in row]


def _table(by_seed: dict[int, list[dict]], keys: list[tuple]) -> np.ndarray:
    """[S, P, K] metric values."""
    return np.array([[[get_path(r, k) for k in keys] for r in by_seed[s]] for s in sorted(by_seed)], dtype=float)


def tree(keys: list[tuple], values) -> dict:
    out: dict = {}
    for k, v in zip(keys, values):
        set_path(out, k, v)
    return out


def split_block(tree_by_split: dict[str, dict], strata=()) -> dict:
    """{"id": ..., "ood": {split: ...}[, "strata": {name: ...}]} from {split_key: ...}: a stratum (a
    named subset of an evaluated split's prompts, e.g. the hard ID pairs) is neither ID nor OOD."""
    out = {"id": tree_by_split["id"],
           "ood": {k: v for k, v in tree_by_split.items() if k != "id" and k not in strata}}
    if strata:
        out["strata"] = {k: v for k, v in tree_by_split.items() if k in strata}
    return out


def label_shares(rows: list[dict]) -> dict[str, float]:
    """Share of each label (graph: concept) among all correct samples of these rows."""
    total = Counter()
    for r in rows:
        total.update({str(k): v for k, v in r.get("label_counts", {}).items()})
    n = sum(total.values())
    return {k: round(v / n, 6) for k, v in sorted(total.items(), key=lambda kv: int(kv[0]))} if n else {}


def summarize(rows: dict, paired_against=("grpo", "sdsd"), n_boot: int = 2000, seed: int = 0,
              level: float = 0.95, strata=()) -> tuple[dict, dict]:
    """(methods block of summary.json, {"keys", "replicates", "estimates"}: per split the metric paths,
    {method: [n_boot, K]} crossed-bootstrap replicates and {method: [K]} point estimates).

    Per method: means over seeds of means over prompts, `ci95` (crossed bootstrap), `paired`
    differences against each of `paired_against` that is present ({"mean", "ci95"} of method minus
    reference, from the same replicates), `label_shares`, and the per-seed means."""
    methods = list(rows)
    splits = list(next(iter(rows[methods[0]].values())))
    seeds_of = {m: sorted(rows[m]) for m in methods}
    shared_seeds = seed_resamples({m: len(seeds_of[m]) for m in methods}, n_boot, [seed, 1])
    est, ci, reps, keys_of = {}, {}, {}, {}
    for i, split in enumerate(splits):
        keys = metric_keys(rows[methods[0]][seeds_of[methods[0]][0]][split][0])
        tables = {m: _table({s: rows[m][s][split] for s in seeds_of[m]}, keys) for m in methods}
        reps[split] = crossed_bootstrap(tables, n_boot, [seed, 2, i], shared_seeds)
        keys_of[split] = keys
        for m in methods:
            est[m, split] = point_estimate(tables[m])
            ci[m, split] = percentile_interval(reps[split][m], level)
    out = {}
    for m in methods:
        entry = {
            "seeds": seeds_of[m],
            **split_block({s: tree(keys_of[s], est[m, s].tolist()) for s in splits}, strata),
            "ci95": split_block({s: tree(keys_of[s], ci[m, s].tolist()) for s in splits}, strata),
        }
        entry["paired"] = {}
        for ref in paired_against:
            if ref in rows and ref != m:
                entry["paired"][ref] = split_block({
                    s: tree(keys_of[s], [{"mean": float(d), "ci95": c} for d, c in zip(
                        est[m, s] - est[ref, s], percentile_interval(reps[s][m] - reps[s][ref], level).tolist())])
                    for s in splits}, strata)
        entry["label_shares"] = split_block({s: label_shares([r for sd in seeds_of[m] for r in rows[m][sd][s]])
                                              for s in splits}, strata)
        entry["per_seed"] = [{"seed": sd, **split_block(
            {s: tree(keys_of[s], point_estimate(_table({sd: rows[m][sd][s]}, keys_of[s])).tolist())
             for s in splits}, strata)} for sd in seeds_of[m]]
        out[m] = entry
    return out, {"keys": keys_of, "replicates": reps,
                 "estimates": {s: {m: est[m, s] for m in methods} for s in splits}}


def ratio_block(stats: dict, methods: list[str], paired_against=("grpo", "sdsd"), split: str = "id",
                level: float = 0.95) -> dict:
    """The ratio test per method (`metrics.ratio`): the pooled slope of the log-ratio change on the
    pcmi difference, the partial slope on pcmi controlling for the base log-prob difference and the
    sharpening coefficient, and KL(pi(.|C) || p0(.|C)), each with its crossed-bootstrap interval, and
    the paired differences against `paired_against`. Empty when the split has no ratio columns."""
    keys = stats["keys"].get(split, [])
    if ("ratio_sxy",) not in keys:
        return {}
    j = {k: keys.index((k,)) for k in RATIO_KEYS}

    def coefficients(x):  # x: [..., K] means -> {name: [...]}
        col = {k: x[..., i] for k, i in j.items()}
        pcmi, sharp = partial_slopes(col["ratio_sxy"], col["ratio_sxx"], col["ratio_sey"], col["ratio_see"],
                                     col["ratio_sxe"])
        return {"slope": slope(col["ratio_sxy"], col["ratio_sxx"]), "partial_slope": pcmi, "sharpening": sharp,
                "kl_correct": col["kl_correct"]}

    def interval(v):
        return percentile_interval(np.asarray(v)[:, None], level)[0].tolist()

    est = {m: {k: float(v) for k, v in coefficients(np.asarray(stats["estimates"][split][m])).items()}
           for m in methods}
    rep = {m: coefficients(stats["replicates"][split][m]) for m in methods}
    out = {}
    for m in methods:
        entry = {"slope": est[m]["slope"], "ci95": interval(rep[m]["slope"]),
                 "partial_slope": est[m]["partial_slope"], "partial_ci95": interval(rep[m]["partial_slope"]),
                 "sharpening": est[m]["sharpening"], "sharpening_ci95": interval(rep[m]["sharpening"]),
                 "kl_correct": est[m]["kl_correct"], "kl_ci95": interval(rep[m]["kl_correct"]), "paired": {}}
        for ref in paired_against:
            if ref in methods and ref != m:
                entry["paired"][ref] = {k: {"mean": est[m][k] - est[ref][k], "ci95": interval(rep[m][k] - rep[ref][k])}
                                        for k in ("slope", "partial_slope", "sharpening", "kl_correct")}
        out[m] = entry
    return out


def frontier_gaps(replicates: dict, curves: dict[str, list[str]], points: list[str], x: tuple, ys: list[tuple],
                  level: float = 0.95) -> dict:
    """How far each point lies above a trade-off curve, with a paired bootstrap interval.

    `curves[name]` lists the curve's methods (e.g. base, grpo@0.25, ..., grpo); `x` and each of
    `ys` are (split_key, metric path). In every replicate the curve is interpolated linearly (in x,
    points sorted by x) at the point's x and subtracted from the point's y; a point outside the
    curve's x range gets no gap (NaN) in that replicate. Returns {point: {curve: {y label:
    {"mean", "ci95", "outside_share"}}}} where `mean` uses the point estimates (replicate medians
    where a replicate is outside is not defined)."""
    keys, reps = replicates["keys"], replicates["replicates"]

    def column(split, path, name):
        return reps[split][name][:, keys[split].index(path)]

    out: dict = {}
    for p in points:
        out[p] = {}
        for cname, members in curves.items():
            if p in members:
                continue
            out[p][cname] = {}
            px = column(*x, p)
            cx = np.stack([column(*x, m) for m in members], 1)
            for y in ys:
                py = column(*y, p)
                cy = np.stack([column(*y, m) for m in members], 1)
                gaps = np.full(len(px), np.nan)
                for b in range(len(px)):
                    order = np.argsort(cx[b])
                    xs, yv = cx[b, order], cy[b, order]
                    if xs[0] <= px[b] <= xs[-1] and np.isfinite(py[b]) and np.isfinite(yv).all():
                        gaps[b] = py[b] - np.interp(px[b], xs, yv)
                lo, hi = percentile_interval(gaps[:, None], level)[0]
                label = f"{y[0]} {'/'.join(y[1])}"
                out[p][cname][label] = {"median": float(np.nanmedian(gaps)) if np.isfinite(gaps).any() else None,
                                        "ci95": [float(lo), float(hi)],
                                        "outside_share": float(np.mean(~np.isfinite(gaps)))}
    return out
