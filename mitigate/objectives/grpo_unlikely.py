"""grpo_unlikely: GRPO with the unlikeliness reward (correct samples that the policy finds likely
are rewarded less).

Within each group, the c correct rollouts are ranked by their sequence log-prob under the sampling
policy, sum_t log pi_old(y_t | .), from the likeliest (rank 0) to the least likely (rank c - 1);
equal log-probs share the mean of their ranks. The reward is

    r_i = 1 - beta * (G - rank_i) / G       y_i correct        r_i = 0    y_i incorrect

and the advantages are GRPO's on these rewards (`mitigate.objectives.grpo.policy_gradient`). With
beta < 1 every correct rollout still earns more than every incorrect one; among correct outputs
the likelier ones get less, which counteracts the sharpening that a constant reward on the correct
set produces in a finite group. beta = 0 is GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.grpo import GRPOConfig, policy_gradient
from mitigate.ops import group_advantages


@dataclass
class GRPOUnlikelyConfig(GRPOConfig):
    name: str = opt("grpo_unlikely", "registered objective name")
    beta: float = opt(0.25, "unlikeliness penalty: the likeliest correct rollout earns 1 - beta", min=0.0, max=1.0)


def likelihood_ranks(seq_logprob: torch.Tensor, correct: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """[B] rank of each correct rollout within its group's correct rollouts by `seq_logprob`,
    0 = likeliest, ties sharing their mean rank; NaN for incorrect rollouts."""
    ranks = torch.full_like(seq_logprob, float("nan"), dtype=torch.float64)
    for g in torch.unique(group_index).tolist():
        rows = torch.nonzero((group_index == g) & correct).flatten()
        v = seq_logprob[rows].double()
        above = (v[None, :] > v[:, None]).sum(1).double()  # strictly likelier rollouts
        same = (v[None, :] == v[:, None]).sum(1).double()
        ranks[rows] = above + (same - 1) / 2
    return ranks


def unlikeliness_rewards(seq_logprob: torch.Tensor, correct: torch.Tensor, group_index: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """[B] r_i of the module docstring."""
    G = torch.bincount(group_index)[group_index].double()
    ranks = likelihood_ranks(seq_logprob, correct, group_index)
    return torch.where(correct, 1 - beta * (G - torch.nan_to_num(ranks)) / G, torch.zeros_like(G))


@register_objective("grpo_unlikely", GRPOUnlikelyConfig)
def grpo_unlikely(batch: Batch, ctx: Context, cfg: GRPOUnlikelyConfig) -> tuple[torch.Tensor, dict]:
    seq = (batch.old_token_logprobs.detach() * batch.mask).sum(1)
    rewards = unlikeliness_rewards(seq, batch.correct, batch.group_index, cfg.beta).to(batch.rewards.dtype)
    adv, zero_std = group_advantages(rewards, batch.group_index, cfg.scale_std)
    loss, scalars = policy_gradient(batch, adv, cfg)
    return loss, {**scalars, "zero_std_groups": zero_std.float().mean().item(),
                  "reward_correct": float(rewards[batch.correct].mean()) if batch.correct.any() else 0.0}
