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


