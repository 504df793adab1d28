"""What an objective sees, and the objective registry.

An objective is a function `(batch, ctx, cfg) -> (loss, scalars)` registered with its config:

    @register_objective("grpo", GRPOConfig)
    def grpo(batch: Batch, ctx: Context, cfg: GRPOConfig) -> tuple[Tensor, dict[str, float]]: ...

`batch` holds this step's rollout tensors (read-only) and the student's and reference's `Scores`
of them (`mitigate.policies.base`): per-token log-probs, divergences and entropies come as [B, T]
(`batch.token_logprobs()`, `batch.divergence(target, kind)`, `batch.token_entropy()`), never as
the [B, T, V] log-probs, which a real vocabulary makes too large to hold. `ctx` names everything
else explicitly: the task, the policy being trained, the frozen reference, the teacher (whose
`demonstrations` are `Scores` too), the random stream for objective-side draws. A term that keeps
state across steps (a reference set) is registered as a class instead: it is instantiated once
per run and called with the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mitigate.policies.base import Scores
from mitigate.registries import OBJECTIVES
from mitigate.rollout import generate

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
    scores: Scores  # the student's scores of the rollouts (one forward, with grad)
    old_token_logprobs: torch.Tensor  # [B, T] log-prob of each sampled token when it was sampled
    reference: Scores  # the frozen reference's (base model's) scores of the rollouts: a stop-gradient target

    @property
    def group_size(self) -> int:
        return len(self.group_index) // len(self.prompts)

    def token_logprobs(self) -> torch.Tensor:
        """[B, T] student log-prob of each sampled token, with grad."""
        return self.scores.token_logprobs()

    def divergence(self, target: Scores, kind: str = "reverse_kl", **options) -> torch.Tensor:
        """[B, T] full-vocabulary divergence `kind` from the student (with grad) to `target` (a
        teacher's scores, `batch.reference`, a mixture; no gradient), `mitigate.ops.token_divergence`'s
        conventions: reverse_kl = KL(student || target). `options`: `alpha` (kind "gjsd"), `topk` and
        `topk_of` (top-k with a tail bucket), `mitigate.ops.divergence_with`; none by default."""
        return self.scores.divergence(target, kind, **options) if options else self.scores.divergence(target, kind)

    def token_entropy(self) -> torch.Tensor:
        """[B, T] entropy of the student's next-token distribution at each position, with grad."""
        return self.scores.entropy()

    def zero_loss(self) -> torch.Tensor:
        """A zero loss attached to the student's graph (a term with nothing to say this step)."""
        return self.token_logprobs().sum() * 0

    @property
    def logprobs(self) -> torch.Tensor:
        """[B, T, V] student log-probs, with grad. MATERIALISES the full tensor (rollouts x positions
        x vocabulary: gigabytes for a real model); kept for code written before `Scores`. Use
        `token_logprobs()`, `divergence(...)` or `token_entropy()` instead."""
        return self.scores.materialise()

    @property
    def ref_logprobs(self) -> torch.Tensor:
        """[B, T, V] reference log-probs, no grad. MATERIALISES the full tensor (see `logprobs`); use
        `divergence(batch.reference, ...)` or `batch.reference.token_logprobs()` instead."""
        return self.reference.materialise().detach()


@dataclass
class Context:
    """Everything an objective or regularizer may call besides the batch."""

    task: object  # the Task
    policy: object  # the Policy being trained; `policy.token_logprobs` under grad scores off-policy paths
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
