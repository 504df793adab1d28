"""What a training run spent: rollouts, verifier calls, extra reference generations, forward and
backward tokens, wall time. Counted where the work happens (the policy's and the task's own
calls), so a term that quietly samples or scores more (a replay set, M teachers) shows up in its
run's budget without any bookkeeping of its own.

    budget = Budget()
    policy, reference = Metered(policy, budget, "rollouts"), Metered(reference, budget, "reference_generations")
    task = MeteredTask(task, budget)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mitigate.policies.base import policy_divergence, policy_token_logprobs, scores_of


@dataclass
class Budget:
    rollouts: int = 0  # sequences sampled from the policy being trained (training only)
    verifier_calls: int = 0  # completions checked by the task's verifier
    reference_generations: int = 0  # sequences sampled from the frozen reference (e.g. a replay set)
    forward_tokens: int = 0  # context + completion tokens through any forward (sampling, scoring, teachers)
    backward_tokens: int = 0  # tokens of forwards run with grad (they are backpropagated)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _n_tokens(contexts, mask) -> int:
    return int(sum(len(c) for c in contexts)) + int(mask.sum())


class Metered:
    """A policy whose sampling and scoring calls are counted into `budget`; everything else is
    the wrapped policy's own. `samples_as` names the counter its samples go to."""

    def __init__(self, policy, budget: Budget, samples_as: str = "rollouts"):
        self.__dict__.update(_policy=policy, _budget=budget, _samples_as=samples_as)

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def __setattr__(self, name, value):
        setattr(self._policy, name, value)

    def sample(self, contexts, max_new_tokens, *args, **kwargs):
        out = self._policy.sample(contexts, max_new_tokens, *args, **kwargs)
        setattr(self._budget, self._samples_as, getattr(self._budget, self._samples_as) + len(contexts))
        self._budget.forward_tokens += _n_tokens(contexts, out.mask)
        return out

    def _count_scoring(self, contexts, mask) -> None:
        n = _n_tokens(contexts, mask)
        self._budget.forward_tokens += n
        if torch.is_grad_enabled():
            self._budget.backward_tokens += n

    def logprobs(self, contexts, tokens, mask):
        self._count_scoring(contexts, mask)
        return self._policy.logprobs(contexts, tokens, mask)

    def scores(self, contexts, tokens, mask):
        self._count_scoring(contexts, mask)
        return scores_of(self._policy, contexts, tokens, mask)

    # the one-call forms go through `scores`, so that their forwards are counted here
    def token_logprobs(self, contexts, tokens, mask):
        return policy_token_logprobs(self, contexts, tokens, mask)

    def divergence(self, other, contexts, other_contexts, tokens, mask, kind="reverse_kl"):
        return policy_divergence(self, other, contexts, other_contexts, tokens, mask, kind)

    def frozen_copy(self):
        return Metered(self._policy.frozen_copy(), self._budget, self._samples_as)


class MeteredTask:
    """A task whose verifier calls are counted into `budget`."""

    def __init__(self, task, budget: Budget):
        self.__dict__.update(_task=task, _budget=budget)

    def __getattr__(self, name):
        return getattr(self._task, name)

    def verify(self, prompts, completions):
        self._budget.verifier_calls += len(prompts)
        return self._task.verify(prompts, completions)
