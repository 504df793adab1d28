"""The one sampler path for training and evaluation: n samples per prompt, verified by the task.

    rollouts = generate(policy, task, prompts, n, temperature, generator, batch_size)

Rows are grouped by prompt (rows i*n .. i*n+n-1 answer prompts[i]), which is both a GRPO group
and an evaluation prompt's sample set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class Rollouts:
    prompts: list  # the P distinct prompts
    n: int  # samples per prompt
    contexts: list[list[int]]  # [P*n] the student context of each row
    tokens: torch.Tensor  # [P*n, T] sampled tokens, padding after the end of sequence
    mask: torch.Tensor  # [P*n, T] 1 on sampled tokens up to and including the end of sequence
    correct: np.ndarray  # [P*n] bool, the task's verifier
    labels: np.ndarray  # [P*n] semantic label (graph: concept) of correct rows, -1 otherwise
    token_entropy: torch.Tensor  # [P*n] mean per-token entropy of the sampling distribution

    @property
    def group_index(self) -> torch.Tensor:
        return torch.arange(len(self.prompts)).repeat_interleave(self.n)

    def rows(self, i: int) -> slice:
        """The rows of prompt i."""
        return slice(i * self.n, (i + 1) * self.n)


def generate(policy, task, prompts: list, n: int, temperature: float, generator: torch.Generator,
             batch_size: int, desc: str = "sample", quiet: bool = True) -> Rollouts:
    """n samples for each prompt from `policy`, verified by `task`."""
    contexts = [q.tokens for q in prompts for _ in range(n)]
    with tqdm(total=len(contexts), desc=desc, unit="seq", disable=quiet, leave=False) as bar:
        s = policy.sample(contexts, task.max_new_tokens, temperature, generator, batch_size, progress=bar)
    repeated = [q for q in prompts for _ in range(n)]
    correct, labels = task.verify(repeated, s.tokens.numpy())
    return Rollouts(prompts=list(prompts), n=n, contexts=contexts, tokens=s.tokens, mask=s.mask,
                    correct=np.asarray(correct), labels=np.asarray(labels), token_entropy=s.token_entropy)
