"""sdsd_cmi: SDSD with ratio-preserving reweighting by estimated conditional mutual information.

SDSD's sequence-level optimum is p0(y) exp(E_{y*}[pcmi(y; y*|x)]) / Z: the token-level KL to the
teacher acts, summed over a rollout, like a reward pcmi(y; y*) = log p(y|x,y*) - log p(y|x). This
objective estimates each rollout's tilt from M demonstrations of its group,

    pcmi_hat(y_i) = (1/M) sum_m sum_t [log p(y_t | x, y*_m, y_<t) - log pi(y_t | x, y_<t)],

and removes its between-rollout differences among the group's correct rollouts with a score-function
term of opposite sign, while the token-level distillation (to each demonstration's teacher,
averaged over m) keeps its credit assignment within a rollout:

    L = agg_t [ (1/M) sum_m D(pi || p(.|x,y*_m))_t
                + coef * 1[y_i correct] (pcmi_hat_i - mean_C pcmi_hat) log pi(y_t) ]

With coef = 1 the tilt's gradient E[grad log pi(y) pcmi(y)] is cancelled up to estimation noise, so
the fixed point is p0(y) exp(E pcmi - pcmi_hat) / Z: ratio-preserving among correct outputs as M
grows (mitigate.theory.cmi_reweighted_optimum). Incorrect rollouts keep SDSD's full signal.
coef > 1 reverses the estimated tilt (fixed point p0 exp((1 - coef) pcmi) / Z, favouring outputs
that demonstrations make *less* likely); on the graph task coef 2-3 is what restores the base's
concept diversity, because finite-step on-policy training concentrates every method a little
(baselines/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.sdsd import SDSDConfig
from mitigate.ops import aggregate, centre_among_correct, gather_tokens, masked_mean, token_divergence


@dataclass
class SDSDCMIConfig(SDSDConfig):
    name: str = opt("sdsd_cmi", "registered objective name")
    M: int = opt(4, "demonstrations per rollout for the pcmi estimate", min=1)
    coef: float = opt(1.0, "weight of the tilt-cancelling term (1 = cancel the estimated tilt)", min=0.0)


@register_objective("sdsd_cmi", SDSDCMIConfig)
def sdsd_cmi(batch: Batch, ctx: Context, cfg: SDSDCMIConfig) -> tuple[torch.Tensor, dict]:
    if cfg.estimator != "full_vocab":
        raise ValueError("sdsd_cmi supports estimator 'full_vocab' only")
    demos, teachers = ctx.teacher.demonstrations(batch, ctx, cfg.M)
    has_demo = (demos[:, 0] >= 0).float()[:, None]
    mask = batch.mask * has_demo
    divergence = torch.stack([token_divergence(batch.logprobs, t, cfg.divergence) for t in teachers]).mean(0)
    student_tok = batch.token_logprobs()
    teacher_tok = torch.stack([gather_tokens(t, batch.tokens) for t in teachers]).mean(0)
    pcmi_hat = ((teacher_tok - student_tok.detach()) * mask).sum(-1)  # [B]
    centred = centre_among_correct(pcmi_hat, batch.group_index, batch.correct)
    per_token = divergence + cfg.coef * centred[:, None] * student_tok
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.logprobs.sum() * 0
    correct = batch.correct & (demos[:, 0] >= 0)
    return loss, {f"{cfg.divergence}_teacher": masked_mean(divergence.detach(), mask).item(),
                  "pcmi_hat_correct": pcmi_hat[correct].mean().item() if correct.any() else 0.0,
                  "pcmi_spread_correct": centred[correct].abs().mean().item() if correct.any() else 0.0,
                  "masked_prompts": 1.0 - has_demo.mean().item()}
