"""The batch an objective sees. The loop fills it; objectives only read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    task: Any
    prompts: list  # the P distinct prompts of this step
    group_index: torch.Tensor  # [B] rollout -> prompt index (B = P * group_size)
    contexts: list[list[int]]  # [B] student contexts (the prompt tokens)
    tokens: torch.Tensor  # [B, T] rollouts, PAD after EOS
    mask: torch.Tensor  # [B, T] float, 1 on generated tokens up to and including EOS
    rewards: torch.Tensor  # [B] verifier reward in {0, 1}
    correct: torch.Tensor  # [B] bool
    concepts: torch.Tensor  # [B] concept of correct rollouts, -1 otherwise
    logprobs: torch.Tensor  # [B, T, V] student log-probs, with grad
    old_token_logprobs: torch.Tensor  # [B, T] log-prob of each sampled token when it was sampled
    teacher_fn: Callable[[list[list[int]]], torch.Tensor]  # contexts -> [B, T, V], no grad
    ref_fn: Callable[[], torch.Tensor]  # -> [B, T, V] frozen base model, no grad (cached)
    generator: torch.Generator  # for demonstration draws; seeded by the loop
    ref_sample_fn: Callable[[list, int], tuple] | None = None  # (prompts, n) -> base-model samples
    score_fn: Callable | None = None  # (contexts, tokens, mask) -> student log-probs [N, T, V], with grad
    cache: dict = field(default_factory=dict)  # per step: memoise across inner epochs
    state: dict = field(default_factory=dict)  # per run: persists across steps (e.g. reference sets)

    @property
    def group_size(self) -> int:
        return len(self.group_index) // len(self.prompts)

    def token_logprobs(self) -> torch.Tensor:
        return self.logprobs.gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)

    def teacher_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        """Teacher log-probs [B, T, V] of these rollouts under the given contexts (no grad)."""
        return self.teacher_fn(contexts)

    def ref_logprobs(self) -> torch.Tensor:
        return self.ref_fn()

    def student_logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Student log-probs [N, T, V], with grad, of other continuations (e.g. off-policy paths)."""
        if self.score_fn is None:
            raise RuntimeError("this batch was built without a student scorer")
        return self.score_fn(contexts, tokens, mask)

    def ref_samples(self, prompts: list, n: int) -> tuple:
        """n samples per prompt from the frozen base model: (tokens [P*n, T] numpy, correct [P*n],
        concepts [P*n]), drawn with the loop's seeded generator."""
        if self.ref_sample_fn is None:
            raise RuntimeError("this batch was built without a base-model sampler")
        return self.ref_sample_fn(prompts, n)
