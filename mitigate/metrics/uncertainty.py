"""Uncertainty markers in text responses: how often a model hedges or has second thoughts.

    marker_stats(texts, markers, n_tokens)   # {"uncertainty_rate", "uncertainty_share", "response_words",
                                             #  "response_tokens"} of one prompt's responses

A marker is a word or phrase of a list (a task offers one per language: sciqa's
`tasks/sciqa/data/uncertainty_markers.json`). Matching is case-insensitive on whole words: a phrase's
words separated by any whitespace, no letter or digit directly before or after ("maybe" counts in
"Maybe," but not in "maybelline"). Phrases are tried longest first and occurrences do not overlap, so
"i don't know" is one marker, not also "know". Per prompt, over ALL its responses (correct or not):

    uncertainty_rate    marker occurrences per 100 words, pooled over the responses (0 with no words)
    uncertainty_share   share of responses with at least one marker
    response_words      mean words per response (whitespace-separated)
    response_tokens     mean generated tokens per response (the completion mask; given by the caller)

The claim under test (issue 26): a teacher that sees more (a whole solution, the answer and a verdict)
suppresses the student's expressed uncertainty, read here as a falling rate and shorter responses.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

UNCERTAINTY_KEYS = ("uncertainty_rate", "uncertainty_share", "response_words", "response_tokens")


@lru_cache(maxsize=16)
def marker_pattern(markers: tuple[str, ...]) -> re.Pattern:
    """One regex for every marker: longest first, whole words, any whitespace between a phrase's words."""
    phrases = sorted({m.strip().lower() for m in markers if m.strip()}, key=lambda m: (-len(m), m))
    if not phrases:
        raise ValueError("no uncertainty markers given")
    body = "|".join(r"\s+".join(re.escape(w) for w in p.split()) for p in phrases)
    return re.compile(rf"(?<![\w])(?:{body})(?![\w])", re.IGNORECASE)


def count_markers(text: str, markers) -> int:
    """Non-overlapping occurrences of the markers in `text` (rules in the module docstring)."""
    return len(marker_pattern(tuple(markers)).findall(text))


def marker_stats(texts: list[str], markers, n_tokens=None) -> dict[str, float]:
    """The per-prompt uncertainty keys of `texts` (one prompt's responses); `n_tokens` [n] their
    generated token counts (response_tokens; NaN when not given)."""
    counts = np.array([count_markers(t, markers) for t in texts], dtype=float)
    words = np.array([len(t.split()) for t in texts], dtype=float)
    if not len(texts):
        return {"uncertainty_rate": 0.0, "uncertainty_share": 0.0, "response_words": 0.0, "response_tokens": 0.0}
    return {"uncertainty_rate": float(100.0 * counts.sum() / words.sum()) if words.sum() else 0.0,
            "uncertainty_share": float((counts > 0).mean()),
            "response_words": float(words.mean()),
            "response_tokens": float(np.mean(n_tokens)) if n_tokens is not None else float("nan")}
