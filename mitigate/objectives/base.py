"""What an objective sees, and the objective registry.

An objective is a function `(batch, ctx, cfg) -> (loss, scalars)` registered with its config:

    @register_objective("grpo", GRPOConfig)
    def grpo(batch: Batch, ctx: Context, cfg: GRPOConfig) -> tuple[Tensor, dict[str, float]]: ...

`batch` holds this step's rollout tensors (read-only); `ctx` names everything else explicitly: the
task, the policy being trained, the frozen reference, the teacher, the random stream for
objective-side draws. A term that keeps state across steps (a reference set) is registered as a
class instead: it is instantiated once per run and called with the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mitigate.core.registry import Registry
from mitigate.rollout import generate

OBJECTIVES = Registry("objective")
register_objective = OBJECTIVES.register


@dataclass(frozen=True)
class Batch:
    """One step's rollouts: P prompts x G samples, B = P * G rows."""

    prompts: list  # the P distinct prompts of this step
    group_index: torch.Tensor  # [B] row -> prompt index
    contexts: list[list[int]]  # [B] student contexts (the prompt tokens)
    tokens: torch.Tensor  # [B, T] rollouts, padding after the end of sequence
    mask: torch.Tensor  # [B, T] float, 1 on generated tokens up to and including the end of sequence
    rewards: torch.Tensor  # [B] verifier reward in {0, 1}
    correct: torch.Tensor  # [B] bool
    labels: torch.Tensor  # [B] semantic label (graph: concept) of correct rollouts, -1 otherwise
    logprobs: torch.Tensor  # [B, T, V] student log-probs, with grad
    old_token_logprobs: torch.Tensor  # [B, T] log-prob of each sampled token when it was sampled
    ref_logprobs: torch.Tensor  # [B, T, V] frozen reference (base model) log-probs, no grad

    @property
    def group_size(self) -> int:
        return len(self.group_index) // len(self.prompts)

    def token_logprobs(self) -> torch.Tensor:
        """[B, T] student log-prob of each sampled token, with grad."""
        return self.logprobs.gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class Context:
    """Everything an objective or regularizer may call besides the batch."""

    task: object  # the Task
    policy: object  # the Policy being trained; `policy.logprobs` under grad scores off-policy paths
    reference: object  # frozen copy of the initial policy (the KL anchor's reference)
    teacher: object  # mitigate.objectives.teacher.Teacher
    generator: torch.Generator  # the "objective" random stream: demonstrations, replay paths
    reference_generator: torch.Generator  # the "reference" stream: samples from the frozen reference
    temperature: float  # rollout temperature (reference samples use it too)
    batch_size: int  # sampler batch size
    step: int = 0  # current optimizer step (1-based once training starts); keys per-step caches

    def reference_samples(self, prompts: list, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n samples per prompt from the frozen reference: (tokens [P*n, T], correct, labels)."""
        r = generate(self.reference, self.task, prompts, n, self.temperature, self.reference_generator,
                     self.batch_size)
        return r.tokens.numpy(), r.correct, r.labels


def make_term(entry):
    """The callable of a registry entry: functions as they are, classes instantiated once per run."""
    return entry.target() if isinstance(entry.target, type) else entry.target
