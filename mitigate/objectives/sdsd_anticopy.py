"""sdsd_anticopy: token-level SDSD plus an anti-copy novelty reward on correct rollouts.

This is what `sdsd_cmi` was before it was made consistent with its theory, kept under a name that
says what it does: its fixed point is not the base ratios. The token-level distillation toward
the M demonstration-conditioned teachers keeps SDSD's signal and its tilt; a score-function term
pays correct rollouts for being unlike what the demonstrations predict:

    pcmi_im = sum_t [log p(y_t | x, y*_im, y_<t) - log pi(y_t | x, y_<t)]   (detached), pcmi_hat_i = mean_m
    L   = agg_t [ (1/M) sum_m D(pi || p(. | x, y*_im))_t + coef c_i log pi(y_{i,t} | x, y_{i,<t}) ]
    c_i = pcmi_hat_i - l_i      for a correct rollout with another correct one in its group, else 0

l_i is sdsd_cmi's baseline: the other correct rollouts' pcmi against demonstrations other than
y_i (0 if there is none), so it depends neither on y_i's own value nor on y_i as a demonstration
and does not change the expected gradient.

Fixed point, with the shared KL anchor beta: the distillation term alone has SDSD's per-prefix
geometric mean of teachers (a tilt toward what likely demonstrations say); the score term adds,
on correct outputs, the reward R(y) = -coef a E_{y*}[pcmi(y; y*)] + const (a = probability of
another correct rollout), which favours outputs that demonstrations make LESS likely. Treating the
token-level tilt like the sequence-level one, correct outputs end up tilted by roughly
(1 - coef) E pcmi: coef = 1 does not cancel the token-level tilt exactly, and coef > 1 reverses it.
That is a flattening novelty reward, not ratio preservation, and it keeps flattening as training
runs on: runs stopped early can still look close to the base. The exact fixed point is
`mitigate.theory.objective_field("sdsd_anticopy", ...)`; on the enumerable space of
tests/unit/test_theory_code.py (live copy teacher, kappa 1, beta 0.5) coef 3 lowers the top correct
output's share among correct outputs from 0.37 to 0.27, where plain SDSD raises it to 0.77 and
sdsd_cmi keeps every base ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.sdsd import SDSDConfig, demo_options, divergence_options
from mitigate.objectives.sdsd_cmi import demonstration_baseline, per_demonstration_pcmi
from mitigate.ops import aggregate, masked_mean


@dataclass
class SDSDAntiCopyConfig(SDSDConfig):
    name: str = opt("sdsd_anticopy", "registered objective name")
    M: int = opt(4, "demonstrations per rollout for the pcmi estimate", min=1)
    coef: float = opt(3.0, "weight of the anti-copy reward (fixed point ~ p0 exp((1 - coef) E pcmi))", min=0.0)


@register_objective("sdsd_anticopy", SDSDAntiCopyConfig)
def sdsd_anticopy(batch: Batch, ctx: Context, cfg: SDSDAntiCopyConfig) -> tuple[torch.Tensor, dict]:
    if cfg.estimator != "full_vocab":
        raise ValueError("sdsd_anticopy supports estimator 'full_vocab' only")
    demos, teachers = ctx.teacher.demonstrations(batch, ctx, cfg.M, **demo_options(cfg))
    has_demo = (demos[:, 0] >= 0).float()[:, None]
    mask = batch.mask * has_demo
    divergence = torch.stack([batch.divergence(t, cfg.divergence, **divergence_options(cfg))
                              for t in teachers]).mean(0)
    pcmi = per_demonstration_pcmi(batch, teachers, mask)  # [B, M]
    pcmi_hat = pcmi.mean(1)
    correct = batch.correct & (demos[:, 0] >= 0)
    level, has_other = demonstration_baseline(pcmi, demos, batch, correct)
    centred = (pcmi_hat - torch.nan_to_num(level, nan=0.0)) * (correct & has_other)
    per_token = divergence + cfg.coef * centred[:, None] * batch.token_logprobs()
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    return loss, {f"{cfg.divergence}_teacher": masked_mean(divergence.detach(), mask).item(),
                  "pcmi_hat_correct": pcmi_hat[correct].mean().item() if correct.any() else 0.0,
                  "pcmi_spread_correct": centred[correct & has_other].abs().mean().item()
                  if (correct & has_other).any() else 0.0,
                  "masked_prompts": 1.0 - has_demo.mean().item()}
