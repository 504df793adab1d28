"""pass@k: the unbiased estimator, in product form, validated."""

from __future__ import annotations

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


