"""SDSD: self-distillation with sampled demonstrations.

For each rollout y of prompt x, a correct rollout y* of the same group (another one when there is
one) is the demonstration; the teacher is the model itself under no-grad, conditioned on it in
the task's demonstration format (`mitigate.objectives.teacher`). The student minimises the
token-level divergence to it at every position of its own rollout, over the full vocabulary:

    L = agg_t D( pi(. | x, y_<t) || pi_teacher(. | x, y*, y_<t) )       (D = reverse KL by default)

Averaged over y*, its optimum is p0(y) exp(E_{y*} pcmi(y; y* | x)) / Z: the tilt this package
studies. Groups with no correct rollout have no demonstration and are masked (share logged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.teacher import TEACHERS
from mitigate.ops import AGGREGATIONS, DIVERGENCES, aggregate, masked_mean, sampled_token_reverse_kl

ESTIMATORS = ("full_vocab", "sampled_token")


@dataclass
class SDSDConfig(Section):
    name: str = opt("sdsd", "registered objective name")
    divergence: str = opt("reverse_kl", "token-level divergence student -> teacher", choices=DIVERGENCES)
    estimator: str = opt("full_vocab", "full-vocabulary divergence, or score-function on the sampled token",
                         choices=ESTIMATORS)
    teacher: str = opt("live", "teacher weights: current (live), EMA of student, or frozen base",
                       choices=TEACHERS)
    ema_decay: float = opt(0.99, "EMA decay when teacher=ema", min=0.0, max=1.0)
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)


@register_objective("sdsd", SDSDConfig)
def sdsd(batch: Batch, ctx: Context, cfg: SDSDConfig) -> tuple[torch.Tensor, dict]:
    demos, (teacher,) = ctx.teacher.demonstrations(batch, ctx, 1)
    demo = demos[:, 0]
    has_demo = (demo >= 0).float()[:, None]
    mask = batch.mask * has_demo
    if cfg.estimator == "full_vocab":
        per_token = batch.divergence(teacher, cfg.divergence)
        div = per_token.detach()
    else:
        if cfg.divergence != "reverse_kl":
            raise ValueError("estimator 'sampled_token' supports divergence 'reverse_kl' only")
        per_token = sampled_token_reverse_kl(batch.token_logprobs(), teacher.token_logprobs())
        with torch.no_grad():  # logged: the full-vocabulary divergence the estimator targets
            div = batch.divergence(teacher, cfg.divergence)
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    return loss, {f"{cfg.divergence}_teacher": masked_mean(div, mask).item(),
                  "masked_prompts": 1.0 - has_demo.mean().item()}
