"""grpo_passk: the group advantage that maximises pass@k instead of pass@1 (pass@k training).

The group's G rollouts are read as all their k-subsets; a subset's reward is 1 when it holds a
correct rollout. With c correct and G - c incorrect rollouts, closed form (no enumeration):

    R_bar = 1 - C(G - c, k) / C(G, k)                     mean subset reward (unbiased pass@k)
    sigma = sqrt(R_bar (1 - R_bar))                        std of the subset rewards
    A_i   = (1 - R_bar) / sigma                            y_i correct
    A_i   = (1 - R_bar - C(G - c - 1, k - 1) / C(G - 1, k - 1)) / sigma     y_i incorrect

A_i is the mean, over the k-subsets that contain y_i, of the subset's normalised reward
(r_S - R_bar) / sigma (tests check it against that enumeration). Groups with sigma = 0 get zero.
`scale_std: false` drops the division by sigma. k = 1 is GRPO with the population std. The
incorrect rollouts of a group that pass@k already solves are pushed down less than under pass@1,
which is what keeps exploration. Each rollout's advantage is the same for every correct output,
so the leash's fixed point keeps the base's ratios among correct outputs (as GRPO's does).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.grpo import GRPOConfig, policy_gradient


@dataclass
class GRPOPassKConfig(GRPOConfig):
    name: str = opt("grpo_passk", "registered objective name")
    k: int = opt(4, "the k of pass@k the advantage maximises (at most train.group_size)", min=1)


def passk_advantages(correct: torch.Tensor, group_index: torch.Tensor, k: int, scale_std: bool = True
                     ) -> torch.Tensor:
    """[B] pass@k group advantages (module docstring) from [B] bool `correct` and [B] group ids."""
    n = int(group_index.max()) + 1
    size = torch.bincount(group_index, minlength=n)
    n_correct = torch.bincount(group_index, weights=correct.double(), minlength=n).round().long()
    adv = torch.zeros(len(correct), dtype=torch.float64)
    for g in range(n):
        G, c = int(size[g]), int(n_correct[g])
        if k > G:
            raise ValueError(f"grpo_passk: k ({k}) is larger than the group size ({G}); use k <= train.group_size")
        r_bar = 1 - comb(G - c, k) / comb(G, k)
        sigma = (r_bar * (1 - r_bar)) ** 0.5
        if sigma < 1e-12:
            continue
        scale = sigma if scale_std else 1.0
        rows = group_index == g
        pos = (1 - r_bar) / scale
        neg = (1 - r_bar - comb(G - c - 1, k - 1) / comb(G - 1, k - 1)) / scale
        adv[rows] = torch.where(correct[rows].cpu(), torch.tensor(pos, dtype=torch.float64),
                                torch.tensor(neg, dtype=torch.float64))
    return adv.to(device=correct.device)


@register_objective("grpo_passk", GRPOPassKConfig)
def grpo_passk(batch: Batch, ctx: Context, cfg: GRPOPassKConfig) -> tuple[torch.Tensor, dict]:
    adv = passk_advantages(batch.correct, batch.group_index, cfg.k, cfg.scale_std).to(batch.rewards.dtype)
    loss, scalars = policy_gradient(batch, adv, cfg)
    return loss, {**scalars, "passk_adv_incorrect": float(adv[~batch.correct].mean()) if (~batch.correct).any()
                  else 0.0}
