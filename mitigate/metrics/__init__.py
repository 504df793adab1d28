"""Metrics: pass@k, diversity among correct samples, means and bootstrap intervals, ranking."""

from mitigate.metrics.diversity import effective_number, prompt_metrics
from mitigate.metrics.passk import ks_up_to, pass_at_k
from mitigate.metrics.statistics import bootstrap_ci, ci_tree, hierarchical_ci, mean_metrics

__all__ = ["bootstrap_ci", "ci_tree", "effective_number", "hierarchical_ci", "ks_up_to", "mean_metrics",
           "pass_at_k", "prompt_metrics"]
