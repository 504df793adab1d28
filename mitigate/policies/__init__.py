"""Policies: sample, score continuations under given contexts, frozen copy, save/load. Built-ins
register on import; see `mitigate.policies.base` for the protocol."""

from mitigate.policies import hf, tiny_gpt  # noqa: F401  (register the built-in policies)
from mitigate.policies.base import (
    POLICIES,
    CheckpointError,
    FullScores,
    Policy,
    Samples,
    Scores,
    build_policy,
    checkpoint_meta,
    load_policy,
    mixture,
    register_policy,
    resolve_checkpoint,
    scores_of,
    target_scores,
)

__all__ = ["POLICIES", "CheckpointError", "FullScores", "Policy", "Samples", "Scores", "build_policy",
           "checkpoint_meta", "load_policy", "mixture", "register_policy", "resolve_checkpoint", "scores_of",
           "target_scores"]
