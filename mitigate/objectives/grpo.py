"""GRPO: group-normalised advantages and a clipped importance ratio.

    A_i   = (r_i - mean_G r) / (std_G r + eps)           (std scaling switchable)
    rho_t = pi(y_t | .) / pi_old(y_t | .)
    L     = agg_t[ -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) ]

The KL leash to the frozen base model, beta * k3(pi, pi_base), is not here: the loop adds it to
every objective (`train.kl_coef`), so GRPO, SDSD and the mitigations share the same anchor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.ops import AGGREGATIONS, aggregate, group_advantages, masked_mean


@dataclass
class GRPOConfig(Section):
    name: str = opt("grpo", "registered objective name")
    clip_eps: float = opt(0.2, "PPO clip range of the importance ratio", min=0.0)
    scale_std: bool = opt(True, "divide group-centred rewards by the group std")
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)


@register_objective("grpo", GRPOConfig)
def grpo(batch: Batch, ctx: Context, cfg: GRPOConfig) -> tuple[torch.Tensor, dict]:
    adv, zero_std = group_advantages(batch.rewards, batch.group_index, cfg.scale_std)
    logp = batch.token_logprobs()
    ratio = torch.exp(logp - batch.old_token_logprobs)
    a = adv[:, None]
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * a)
    loss = aggregate(pg, batch.mask, cfg.aggregation)
    clipped = ((ratio - 1).abs() > cfg.clip_eps).float()
    return loss, {"clip_frac": masked_mean(clipped, batch.mask).item(),
                  "zero_std_groups": zero_std.float().mean().item()}
