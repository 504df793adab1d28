"""Metrics: pass@k, diversity among correct samples, means and bootstrap intervals, ranking."""

from mitigate.metrics.diversity import distinct_among, effective_number, prompt_metrics
from mitigate.metrics.passk import ks_up_to, pass_at_k
from mitigate.metrics.statistics import (
    bootstrap_ci,
    ci_tree,
    crossed_bootstrap,
    mean_metrics,
    percentile_interval,
    point_estimate,
)

__all__ = ["bootstrap_ci", "ci_tree", "crossed_bootstrap", "distinct_among", "effective_number", "ks_up_to",
           "mean_metrics", "pass_at_k", "percentile_interval", "point_estimate", "prompt_metrics"]
