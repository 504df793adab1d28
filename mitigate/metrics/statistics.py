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


def crossed_bootstrap(tables: dict[str, np.ndarray], n_boot: int = 2000, seed=0,
                      seed_counts: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Replicates of every method's mean under a crossed bootstrap over prompts and seeds.

    `tables[method]` is [S, P, K]: S seeds (training runs), the same P prompts for every method
    and seed, K metrics (NaN where a metric is undefined for a prompt, e.g. diversity among
    correct samples when none is correct). The estimate of a method is the mean over seeds of the
    mean over prompts. One replicate draws ONE multinomial resample of the P prompts, shared by
    every seed and every method (the prompts are a common sample, so their effect must not
    average out across seeds), and resamples each method's seeds (independent training runs).
    Returns {method: [n_boot, K] replicate estimates}; differences of two methods' replicates are
    the paired bootstrap of their difference. `seed_counts` ({method: [n_boot, S]}, from
    `seed_resamples`) shares one seed resample across several calls, e.g. across evaluation splits
    of the same trained models.
    """
    rng = np.random.default_rng(seed)
    n_prompts = {t.shape[1] for t in tables.values()}
    if len(n_prompts) != 1:
        raise ValueError(f"every method must be evaluated on the same prompts, got counts {sorted(n_prompts)}")
    P = n_prompts.pop()
    prompt_counts = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(float)  # [n_boot, P]
    out = {}
    if seed_counts is None:
        seed_counts = seed_resamples({name: t.shape[0] for name, t in tables.items()}, n_boot, rng)
    for name, table in tables.items():
        out[name] = _weighted_estimate(table, prompt_counts, seed_counts[name])
    return out


def seed_resamples(n_seeds: dict[str, int], n_boot: int, rng) -> dict[str, np.ndarray]:
    """{method: [n_boot, S] multinomial counts}: each method's training seeds resampled."""
    rng = np.random.default_rng(rng)
    return {name: rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot).astype(float) for name, S in n_seeds.items()}


def _weighted_estimate(table: np.ndarray, prompt_w: np.ndarray, seed_w: np.ndarray) -> np.ndarray:
    """[n_boot, K] mean over seeds (weights seed_w) of the mean over prompts (weights prompt_w),
    NaN entries left out of both means."""
    valid = np.isfinite(table)
    x = np.where(valid, table, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = np.einsum("bp,spk->bsk", prompt_w, x) / np.einsum("bp,spk->bsk", prompt_w, valid)
        seed_valid = np.isfinite(per_seed)
        num = np.einsum("bs,bsk->bk", seed_w, np.where(seed_valid, per_seed, 0.0))
        return num / np.einsum("bs,bsk->bk", seed_w, seed_valid)


def point_estimate(table: np.ndarray) -> np.ndarray:
    """[K] mean over seeds of the mean over prompts (the estimate the replicates resample)."""
    return _weighted_estimate(table, np.ones((1, table.shape[1])), np.ones((1, table.shape[0])))[0]


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """[K, 2] percentile interval of [n_boot, K] replicates (NaN replicates left out)."""
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN intervals
        return np.stack([np.nanquantile(replicates, a, 0), np.nanquantile(replicates, 1 - a, 0)], 1)


def flat_keys(d, prefix=()):
    keys = []
    for k, v in d.items():
        keys += flat_keys(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
    return keys



def get_path(d, k):
    for p in k:
        d = d[p]
    return d



def set_path(d, k, v):
    for p in k[:-1]:
        d = d.setdefault(p, {})
    d[k[-1]] = v


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control for any dependence): sort the m
    p-values ascending, adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); a hypothesis is
    rejected at level alpha when its adjusted p-value is <= alpha."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm needs a list of p-values in [0, 1], got {p_values!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def bootstrap_p(replicates, margin: float = 0.0, direction: str = "less") -> float:
    """One-sided bootstrap p-value of the claim `estimate < margin` (direction "less") or
    `estimate > margin` ("greater"): the share of replicates on the other side of the margin,
    (1 + #{wrong side}) / (1 + n) so that it is never 0. NaN replicates are left out."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater', got {direction!r}")
    if len(r) == 0:
        return float("nan")
    wrong = np.sum(r >= margin) if direction == "less" else np.sum(r <= margin)
    return float((1 + wrong) / (1 + len(r)))


def pool_task_replicates(per_task: list[dict[str, np.ndarray]], n_boot: int, seed=0) -> dict[str, np.ndarray]:
    """The third bootstrap level: task seeds (each its own graph, prompts and training runs).

    `per_task[t][method]` holds [n_boot_t, K] crossed-bootstrap replicates of task t (prompts and
    seeds resampled within the task; methods paired by replicate index). One pooled replicate draws
    T task seeds with replacement and, for every drawn copy, one of that task's replicates (the same
    index for every method, so differences stay paired; copies of one task get independent draws),
    and averages them: the pooled estimate is the mean over task seeds of the per-task estimates.
    Returns {method: [n_boot, K]}."""
    if not per_task:
        raise ValueError("pool_task_replicates needs at least one task")
    methods = set(per_task[0])
    if any(set(t) != methods for t in per_task):
        raise ValueError("every task must hold the same methods to pool them")
    rng = np.random.default_rng(seed)
    T = len(per_task)
    tasks = rng.integers(T, size=(n_boot, T))  # [n_boot, T] drawn task of each copy
    sizes = [len(next(iter(t.values()))) for t in per_task]
    index = np.floor(rng.random((n_boot, T)) * np.array(sizes)[tasks]).astype(int)  # replicate per copy
    out = {}
    for m in methods:
        K = per_task[0][m].shape[1]
        copies = np.empty((n_boot, T, K))
        for t in range(T):
            drawn = tasks == t
            copies[drawn] = per_task[t][m][index[drawn]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[m] = np.nanmean(copies, axis=1)
    return out
