"""Functional and semantic diversity among correct samples of one prompt."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mitigate.metrics.passk import pass_at_k


def effective_number(labels) -> float:
    """exp of the Shannon entropy (nats) of the empirical distribution; 0 for no labels."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))



def distinct_among(labels, r: int) -> float:
    """Expected number of distinct labels in r of these samples drawn without replacement, exactly:

        E = sum_j [1 - C(c - c_j, r) / C(c, r)]      (c samples, c_j of them with label j)

    (label j is missed only if all r draws avoid its c_j copies; the ratio in product form). NaN when
    fewer than r samples: the count among a *fixed* number of correct samples does not grow with
    accuracy, which the count among all correct samples does."""
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"distinct_among needs an integer r >= 1, got {r!r}")
    counts = np.array(list(Counter(labels).values()), dtype=float)
    c = counts.sum()
    if c < r:
        return float("nan")
    i = np.arange(r)
    missed = np.prod(np.clip(c - counts[:, None] - i, 0, None) / (c - i), axis=1)
    return float(np.sum(1.0 - missed))


def prompt_metrics(correct: np.ndarray, outputs: list, concepts: np.ndarray, ks: list[int], r: int = 0) -> dict:
    """Metrics of one prompt's n samples.

    correct [n] bool; outputs: hashable output per sample (e.g. a token tuple); concepts [n]
    (concept label of correct samples). Diversity is measured among correct samples only. With r > 0,
    also the accuracy-free counts `concepts_at_r` and `distinct_correct_at_r` (`distinct_among`:
    among r correct samples; NaN for a prompt with fewer than r)."""
    n, c = len(correct), int(np.sum(correct))
    good = np.flatnonzero(correct)
    out_labels = [outputs[i] for i in good]
    con_labels = [int(concepts[i]) for i in good]
    top_share = max(Counter(con_labels).values()) / len(con_labels) if con_labels else float("nan")
    row = {
        "pass_at_k": {str(k): pass_at_k(n, c, k) for k in ks},
        "distinct_correct": float(len(set(out_labels))),
        "effective_correct": effective_number(out_labels),
        "concepts": float(len(set(con_labels))),
        "concept_entropy": float(np.log(effective_number(con_labels))) if con_labels else 0.0,
        "top_concept_share": top_share,
    }
    if r:
        row["concepts_at_r"] = distinct_among(con_labels, r)
        row["distinct_correct_at_r"] = distinct_among(out_labels, r)
    return row


