"""sdsd_anticopy: token-level SDSD plus an anti-copy novelty reward on correct rollouts.

This is what `sdsd_cmi` used to be (renamed because its fixed point is not the base ratios). The
token-level distillation to M demonstration-conditioned teachers (averaged over m) keeps SDSD's
signal and its tilt; a score-function term pays correct rollouts for being unlike what the
demonstrations predict:

    pcmi_hat(y) = (1/M) sum_m sum_t [log p(y_t | x, y*_m, y_<t) - log pi(y_t | x, y_<t)]   (detached)
    L = agg_t [ (1/M) sum_m D(pi || p(.|x,y*_m))_t
                + coef * 1[y correct] (pcmi_hat(y) - mean_{y' in C, y' != y} pcmi_hat(y')) log pi(y_t) ]

The centring is leave-one-out (a rollout's own value never enters its baseline). To leading
order (treating the token-level tilt like the sequence-level one) the fixed point is
p0(y) exp((1 - coef) E pcmi(y; y*)) / Z among correct outputs: coef = 1 cancels the tilt only
for a sequence-level distillation (see `sdsd_cmi` for the consistent version), and coef > 1
reverses it, favouring outputs that demonstrations make *less* likely: a flattening novelty
reward, not ratio preservation. Training stopped early can still look close to the base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.sdsd import SDSDConfig
from mitigate.ops import aggregate, gather_tokens, leave_one_out_mean, masked_mean, token_divergence


@dataclass
class SDSDAntiCopyConfig(SDSDConfig):
    name: str = opt("sdsd_anticopy", "registered objective name")
    M: int = opt(4, "demonstrations per rollout for the pcmi estimate", min=1)
    coef: float = opt(3.0, "weight of the anti-copy reward (fixed point ~ p0 exp((1 - coef) E pcmi))", min=0.0)


@register_objective("sdsd_anticopy", SDSDAntiCopyConfig)
def sdsd_anticopy(batch: Batch, ctx: Context, cfg: SDSDAntiCopyConfig) -> tuple[torch.Tensor, dict]:
    if cfg.estimator != "full_vocab":
        raise ValueError("sdsd_anticopy supports estimator 'full_vocab' only")
    demos, teachers = ctx.teacher.demonstrations(batch, ctx, cfg.M)
    has_demo = (demos[:, 0] >= 0).float()[:, None]
    mask = batch.mask * has_demo
    divergence = torch.stack([token_divergence(batch.logprobs, t, cfg.divergence) for t in teachers]).mean(0)
    student_tok = batch.token_logprobs()
    teacher_tok = torch.stack([gather_tokens(t, batch.tokens) for t in teachers]).mean(0)
    pcmi_hat = ((teacher_tok - student_tok.detach()) * mask).sum(-1)  # [B]
    correct = batch.correct & (demos[:, 0] >= 0)
    others = leave_one_out_mean(pcmi_hat, batch.group_index, correct)
    centred = torch.where(correct & ~torch.isnan(others), pcmi_hat - others, torch.zeros_like(pcmi_hat))
    per_token = divergence + cfg.coef * centred[:, None] * student_tok
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.logprobs.sum() * 0
    return loss, {f"{cfg.divergence}_teacher": masked_mean(divergence.detach(), mask).item(),
                  "pcmi_hat_correct": pcmi_hat[correct].mean().item() if correct.any() else 0.0,
                  "pcmi_spread_correct": centred[correct].abs().mean().item() if correct.any() else 0.0,
                  "masked_prompts": 1.0 - has_demo.mean().item()}
