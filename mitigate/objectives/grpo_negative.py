"""grpo_negative: negative-only GRPO, the control for reinforcing incorrect rollouts alone.

GRPO's surrogate (`mitigate.objectives.grpo.policy_gradient`) with every correct rollout's
advantage set to exactly zero:

    A_i = (r_i - mean_G r) / (std_G r + eps)     y_i incorrect (negative: pushed down)
    A_i = 0                                      y_i correct (no gradient at all)

The probability removed from incorrect outputs is redistributed by the softmax in proportion to
what the policy already puts elsewhere, so with the KL leash the fixed point keeps the policy's
ratios among correct outputs (as GRPO does) while raising less sharply the likeliest of them. It is
the row against which `sdsd_cmi` at coef 1 (zero advantage on correct rollouts, pcmi-weighted push
on incorrect ones) must be read: what reinforcing only the negatives does by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.grpo import GRPOConfig, policy_gradient
from mitigate.ops import group_advantages


@dataclass
class GRPONegativeConfig(GRPOConfig):
    name: str = opt("grpo_negative", "registered objective name")


@register_objective("grpo_negative", GRPONegativeConfig)
def grpo_negative(batch: Batch, ctx: Context, cfg: GRPONegativeConfig) -> tuple[torch.Tensor, dict]:
    adv, zero_std = group_advantages(batch.rewards, batch.group_index, cfg.scale_std)
    adv = torch.where(batch.correct, torch.zeros_like(adv), adv)
    loss, scalars = policy_gradient(batch, adv, cfg)
    return loss, {**scalars, "zero_std_groups": zero_std.float().mean().item()}
