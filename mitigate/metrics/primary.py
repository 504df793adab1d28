"""Pre-registered primary endpoints, tested as one family with Holm's correction (numbers only).

An endpoint is a paired comparison named before the results exist (`reproduce.primary`):

    {name: ..., method: sdsd, reference: grpo, split: id, metric: pass_at_k/1, direction: greater, margin: -0.03}

reads "method minus reference on `metric` of `split` is greater than `margin`" (here: SDSD is
non-inferior to GRPO on ID pass@1 at margin 0.03). `metric` is a per-prompt column of the summary
(`pass_at_k/K`, `pass_at_k/max` for the largest k measured, `concepts_at_r`, ...), `ratio_slope` or
`ratio_partial_slope` (the ratio test's slope on pcmi, alone or controlling for sharpening,
`metrics.ratio`). Each endpoint gets a one-sided bootstrap p-value from the paired crossed-bootstrap
replicates (`statistics.bootstrap_p`); Holm's step-down adjustment over the family controls the
chance of any false claim at `alpha`. Everything not in the family is exploratory.
"""

from __future__ import annotations

import numpy as np

from mitigate.metrics.ratio import partial_slopes, slope
from mitigate.metrics.statistics import bootstrap_p, holm, percentile_interval

FIELDS = ("name", "method", "reference", "split", "metric", "direction", "margin")
DIRECTIONS = ("less", "greater")


def check_endpoints(endpoints: list, methods: list[str], splits: list[str]) -> list[dict]:
    """The endpoints with defaults filled in (margin 0), or ValueError naming what is wrong and
    what is allowed. Checked before any work."""
    out, names = [], set()
    for i, e in enumerate(endpoints):
        if not isinstance(e, dict):
            raise ValueError(f"reproduce.primary[{i}] must be a mapping with keys {', '.join(FIELDS)}, got {e!r}")
        unknown = sorted(set(e) - set(FIELDS))
        if unknown:
            raise ValueError(f"reproduce.primary[{i}] has unknown keys {', '.join(unknown)}; "
                             f"allowed: {', '.join(FIELDS)}")
        missing = [k for k in FIELDS if k not in e and k != "margin"]
        if missing:
            raise ValueError(f"reproduce.primary[{i}] lacks {', '.join(missing)}")
        e = {"margin": 0.0, **e}
        for role in ("method", "reference"):
            if e[role] not in methods:
                raise ValueError(f"reproduce.primary[{i}].{role} '{e[role]}' is not a compared method; "
                                 f"allowed: {', '.join(methods)}")
        if e["split"] not in splits:
            raise ValueError(f"reproduce.primary[{i}].split '{e['split']}' is not an evaluated split; "
                             f"allowed: {', '.join(splits)}")
        if e["direction"] not in DIRECTIONS:
            raise ValueError(f"reproduce.primary[{i}].direction '{e['direction']}'; allowed: {', '.join(DIRECTIONS)}")
        if isinstance(e["margin"], bool) or not isinstance(e["margin"], (int, float)):
            raise ValueError(f"reproduce.primary[{i}].margin must be a number, got {e['margin']!r}")
        if e["name"] in names:
            raise ValueError(f"reproduce.primary names '{e['name']}' twice")
        names.add(e["name"])
        out.append(e)
    return out


def metric_column(stats: dict, split: str, method: str, metric: str) -> tuple[float, np.ndarray]:
    """(point estimate, [n_boot] replicates) of one metric; `stats` = {"keys", "replicates",
    "estimates"} from `summary.summarize`."""
    keys = stats["keys"][split]

    def col(path):
        if path not in keys:
            have = ", ".join("/".join(k) for k in keys)
            raise ValueError(f"metric '{'/'.join(path)}' is not measured on split '{split}'; measured: {have}")
        j = keys.index(path)
        return stats["estimates"][split][method][j], stats["replicates"][split][method][:, j]

    if metric == "ratio_slope":
        (x, rx), (y, ry) = col(("ratio_sxy",)), col(("ratio_sxx",))
        return float(slope(x, y)), slope(rx, ry)
    if metric == "ratio_partial_slope":
        sums = [col((k,)) for k in ("ratio_sxy", "ratio_sxx", "ratio_sey", "ratio_see", "ratio_sxe")]
        return float(partial_slopes(*[v for v, _ in sums])[0]), partial_slopes(*[r for _, r in sums])[0]
    path = tuple(metric.split("/"))
    if path == ("pass_at_k", "max"):
        path = max((k for k in keys if k[0] == "pass_at_k"), key=lambda k: int(k[1]))
    return col(path)


def primary_block(endpoints: list[dict], stats: dict, alpha: float = 0.05, level: float = 0.95) -> dict:
    """{"alpha", "correction": "holm", "tests": [...]}: per endpoint the paired difference (method
    minus reference), its two-sided `level` interval, the one-sided p-value of the stated direction,
    the Holm-adjusted p-value over the family and `holds` (adjusted p <= alpha)."""
    tests = []
    for e in endpoints:
        m, rm = metric_column(stats, e["split"], e["method"], e["metric"])
        r, rr = metric_column(stats, e["split"], e["reference"], e["metric"])
        diff = rm - rr
        lo, hi = percentile_interval(diff[:, None], level)[0]
        tests.append({**e, "mean": float(m - r), "ci95": [float(lo), float(hi)],
                      "p_value": bootstrap_p(diff, e["margin"], e["direction"])})
    if tests:
        p = np.array([t["p_value"] for t in tests])
        adjusted = np.full(len(p), np.nan)
        ok = np.isfinite(p)
        if ok.any():
            adjusted[ok] = holm(p[ok])
        for t, a in zip(tests, adjusted):
            t["p_holm"] = float(a)
            t["holds"] = bool(a <= alpha)
    return {"alpha": alpha, "correction": "holm", "tests": tests}
