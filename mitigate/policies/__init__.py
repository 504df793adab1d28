"""Policies: sample, score continuations under given contexts, frozen copy, save/load. Built-ins
register on import; see `mitigate.policies.base` for the protocol."""

from mitigate.policies import hf, tiny_gpt  # noqa: F401  (register the built-in policies)
from mitigate.policies.base import (
    POLICIES,
    CheckpointError,
    Policy,
    Samples,
    build_policy,
    checkpoint_meta,
    load_policy,
    register_policy,
    resolve_checkpoint,
)

__all__ = ["POLICIES", "CheckpointError", "Policy", "Samples", "build_policy", "checkpoint_meta", "load_policy",
           "register_policy", "resolve_checkpoint"]
