"""entropy: a token-level entropy bonus, with an optional full-vocabulary KL leash to the base.

    R = - agg_t H(pi(. | x, y_<t))  +  base_kl * agg_t KL(pi(. | x, y_<t) || pi_0(. | x, y_<t))

The loop adds coef * R, so coef > 0 rewards spread at every position of the model's own rollouts.
It has no fixed point of its own among correct outputs: token entropy is not concept diversity
(a model can be uncertain about routes inside one concept while never leaving it), which is
exactly what the paper argues and what this regularizer lets you measure. The leash pulls the
whole next-token distribution toward the base model, unlike the k3 anchor (sampled tokens only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context
from mitigate.ops import AGGREGATIONS, aggregate
from mitigate.regularizers.base import register_regularizer


@dataclass
class EntropyConfig(Section):
    name: str = opt("entropy", "registered regularizer name")
    coef: float = opt(0.01, "weight of the term in the loss (bonus strength)", min=0.0)
    base_kl: float = opt(0.0, "weight of the full-vocabulary KL(pi || base) leash inside the term", min=0.0)
    aggregation: str = opt("token_mean", "how per-token terms are reduced", choices=AGGREGATIONS)


@register_regularizer("entropy", EntropyConfig)
def entropy(batch: Batch, ctx: Context, cfg: EntropyConfig) -> tuple[torch.Tensor, dict]:
    token_entropy = batch.token_entropy()  # [B, T]
    per_token = -token_entropy
    scalars = {"token_entropy": float(aggregate(token_entropy.detach(), batch.mask, "token_mean"))}
    if cfg.base_kl > 0:
        kl = batch.divergence(batch.reference, "reverse_kl")
        per_token = per_token + cfg.base_kl * kl
        scalars["kl_base_full"] = float(aggregate(kl.detach(), batch.mask, "token_mean"))
    return aggregate(per_token, batch.mask, cfg.aggregation), scalars
