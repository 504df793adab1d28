"""Policies: sample, score continuations under given contexts, frozen copy, save/load. The
built-ins are listed in `mitigate.registries` and imported the first time one is looked up; see
`mitigate.policies.base` for the protocol."""

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
