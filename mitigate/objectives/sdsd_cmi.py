"""sdsd_cmi: sequence-level self-distillation with the sequence-level tilt correction.

Self-distillation toward a teacher that saw a correct demonstration y*, taken at the level of
whole rollouts, is REINFORCE with the pointwise CMI as reward: the score-function gradient of
KL(pi(y|x) || p(y|x,y*)) is -E[grad log pi(y) pcmi(y; y*|x)], pcmi = log p(y|x,y*) - log pi(y|x).
Estimated from M demonstrations of the rollout's group (detached):

    pcmi_hat(y) = (1/M) sum_m sum_t [log p(y_t | x, y*_m, y_<t) - log pi(y_t | x, y_<t)]

Averaged over y*, this reward tilts the optimum to p0(y) exp(E pcmi(y; y*)) / Z (the SDSD tilt
among correct outputs). The correction removes that part and keeps the teacher's signal on
incorrect rollouts. With c = the mean of pcmi_hat over the group's correct rollouts (the level
a correct rollout earns), and c_-i the same mean over the OTHER correct rollouts:

    A(y_i) = pcmi_hat(y_i) - c                          y_i incorrect (how far below correct)
    A(y_i) = (1 - coef) (pcmi_hat(y_i) - c_-i)          y_i correct (0 if it is its group's only one)
    L      = agg_t [ -A(y_i) log pi(y_{i,t} | x, y_{i,<t}) ]

At coef = 1 every correct rollout has advantage exactly 0, whatever it resembles, so the
effective reward is a function of y that is constant on the correct set; with the shared KL
anchor beta the fixed point is p0(y) exp(R(y)/beta) / Z: the base ratios among correct outputs
are preserved (the RL optimum; mitigate.theory). The incorrect rollouts' baseline c does not
depend on them (they are never demonstrations), and a correct rollout's baseline c_-i leaves its
own value out. coef = 0 is sequence-level SDSD with a leave-one-out baseline among correct
rollouts (fixed point p0 exp(E pcmi) / Z).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.teacher import TEACHERS
from mitigate.ops import AGGREGATIONS, aggregate, gather_tokens, leave_one_out_mean, masked_group_mean, masked_mean


@dataclass
class SDSDCMIConfig(Section):
    name: str = opt("sdsd_cmi", "registered objective name")
    M: int = opt(4, "demonstrations per rollout for the pcmi estimate", min=1)
    coef: float = opt(1.0, "weight of the tilt correction on correct rollouts (1 = remove the tilt, "
                           "0 = sequence-level SDSD)", min=0.0, max=1.0)
    teacher: str = opt("live", "teacher weights: current (live), EMA of student, or frozen base", choices=TEACHERS)
    ema_decay: float = opt(0.99, "EMA decay when teacher=ema", min=0.0, max=1.0)
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)


@register_objective("sdsd_cmi", SDSDCMIConfig)
def sdsd_cmi(batch: Batch, ctx: Context, cfg: SDSDCMIConfig) -> tuple[torch.Tensor, dict]:
    demos, teachers = ctx.teacher.demonstrations(batch, ctx, cfg.M)
    has_demo = demos[:, 0] >= 0
    mask = batch.mask * has_demo.float()[:, None]
    student_tok = batch.token_logprobs()
    teacher_tok = torch.stack([gather_tokens(t, batch.tokens) for t in teachers]).mean(0)
    pcmi_hat = ((teacher_tok - student_tok.detach()) * mask).sum(-1)  # [B]
    correct = batch.correct & has_demo
    others = leave_one_out_mean(pcmi_hat, batch.group_index, correct)  # c_-i
    level = masked_group_mean(pcmi_hat, batch.group_index, correct)  # c
    advantage = torch.where(correct, (1 - cfg.coef) * torch.nan_to_num(pcmi_hat - others), pcmi_hat - level)
    advantage = torch.where(has_demo, advantage, torch.zeros_like(advantage))
    per_token = -advantage[:, None] * student_tok
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else student_tok.sum() * 0
    spread = (pcmi_hat - others)[correct & ~torch.isnan(others)]
    return loss, {"pcmi_hat_correct": pcmi_hat[correct].mean().item() if correct.any() else 0.0,
                  "pcmi_spread_correct": spread.abs().mean().item() if len(spread) else 0.0,
                  "pcmi_hat_incorrect": masked_mean(pcmi_hat, (has_demo & ~batch.correct).float()).item(),
                  "masked_prompts": 1.0 - has_demo.float().mean().item()}
