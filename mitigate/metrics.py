"""pass@k, functional and semantic diversity, and bootstrap confidence intervals."""

from __future__ import annotations

from collections import Counter

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed in product form, C(n-c, k)/C(n, k) = prod_{i=0}^{k-1} (n-c-i)/(n-i), which never
    forms a large binomial (stable for n in the thousands). Validates 0 <= c <= n, 1 <= k <= n.
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer))
            and isinstance(k, (int, np.integer))):
        raise TypeError(f"pass_at_k expects integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    i = np.arange(k)
    return float(1.0 - np.prod((n - c - i) / (n - i)))


def ks_up_to(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to min(64, n)."""
    ks, k = [], 1
    while k <= min(n, 64):
        ks.append(k)
        k *= 2
    return ks


def effective_number(labels) -> float:
    """exp of the Shannon entropy (nats) of the empirical distribution; 0 for no labels."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def prompt_metrics(correct: np.ndarray, outputs: list, concepts: np.ndarray, ks: list[int]) -> dict:
    """Metrics of one prompt's n samples.

    correct [n] bool; outputs: hashable output per sample (e.g. a token tuple); concepts [n]
    (concept label of correct samples). Diversity is measured among correct samples only."""
    n, c = len(correct), int(np.sum(correct))
    good = np.flatnonzero(correct)
    out_labels = [outputs[i] for i in good]
    con_labels = [int(concepts[i]) for i in good]
    top_share = max(Counter(con_labels).values()) / len(con_labels) if con_labels else float("nan")
    return {
        "pass_at_k": {str(k): pass_at_k(n, c, k) for k in ks},
        "distinct_correct": float(len(set(out_labels))),
        "effective_correct": effective_number(out_labels),
        "concepts": float(len(set(con_labels))),
        "concept_entropy": float(np.log(effective_number(con_labels))) if con_labels else 0.0,
        "top_concept_share": top_share,
    }


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
