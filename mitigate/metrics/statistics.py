"""Means and bootstrap intervals over prompts and seeds."""

from __future__ import annotations

import warnings

import numpy as np


def mean_metrics(rows: list[dict]) -> dict:
    """Average nested metric dicts key by key (NaNs ignored)."""
    out = {}
    for key, val in rows[0].items():
        if isinstance(val, dict):
            out[key] = mean_metrics([r[key] for r in rows])
        else:
            vals = np.array([r[key] for r in rows], dtype=float)
            out[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out



def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean (over prompts, or over seeds)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return [float("nan"), float("nan")]
    if len(v) == 1:
        return [float(v[0]), float(v[0])]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(n_boot, len(v)))].mean(1)
    a = (1 - level) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]



def ci_tree(rows: list[dict], **kw) -> dict:
    """Bootstrap intervals for every scalar in a list of identically nested dicts."""
    out = {}
    for key, val in rows[0].items():
        if isinstance(val, dict):
            out[key] = ci_tree([r[key] for r in rows], **kw)
        else:
            out[key] = bootstrap_ci([r[key] for r in rows], **kw)
    return out


def hierarchical_ci(rows_by_seed: list[list[dict]], n_boot: int = 1000, seed: int = 0) -> dict:
    """95% intervals from a two-level bootstrap: resample seeds, then prompts within each seed."""
    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
    rng = np.random.default_rng(seed)
    keys = _flat_keys(rows_by_seed[0][0])
    arrays = [np.array([[_get(r, k) for k in keys] for r in rows], dtype=float) for rows in rows_by_seed]
    boots = np.empty((n_boot, len(keys)))
    for b in range(n_boot):
        picks = rng.integers(len(arrays), size=len(arrays))
        means = [np.nanmean(arrays[s][rng.integers(len(arrays[s]), size=len(arrays[s]))], 0) for s in picks]
        boots[b] = np.nanmean(means, 0)
    lo, hi = np.nanquantile(boots, 0.025, 0), np.nanquantile(boots, 0.975, 0)
    out: dict = {}
    for k, a, c in zip(keys, lo, hi):
        _set(out, k, [float(a), float(c)])
    return out



def _flat_keys(d, prefix=()):
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
    return keys



def _get(d, k):
    for p in k:
        d = d[p]
    return d



def _set(d, k, v):
    for p in k[:-1]:
        d = d.setdefault(p, {})
    d[k[-1]] = v
