"""sdsd_interp: SDSD toward a teacher interpolated with the base model without a demonstration.

The null against which CMI reweighting has to win: shrink the demonstration's influence by mixing
the teacher's log-probabilities with the frozen base's (`batch.reference`: the initial model on the
plain prompt, no demonstration), renormalised over the vocabulary at every position:

    log q_lam(v | x, y*, y_<t) = (1 - lam) log p(v | x, y*, y_<t) + lam log p0(v | x, y_<t) - log Z_t
    L = agg_t D( pi(. | x, y_<t) || q_lam(. | x, y*, y_<t) )                 (D = reverse KL by default)

(Z_t sums the unnormalised geometric mixture over the vocabulary, so q_lam is a distribution.)
lam = 0 is `sdsd` and lam = 1 distils toward the base itself (a second KL anchor). Fixed point with
reverse KL, per prefix as for SDSD: the geometric mean of the interpolated teachers,
pi(v | h) ∝ exp((1 - lam) E_{y*} log p(v | h, y*) + lam log p0(v | h)) = p0(v | h) exp((1 - lam) E_{y*}
pcmi_t(v)): the token-level tilt scaled by (1 - lam) (plus the KL anchor's pull). It shrinks the
tilt uniformly, including on correct outputs, where `sdsd_cmi` removes it; a CMI method that beats
this row at the same shrinkage does more than weaken the teacher. The exact field is
`mitigate.theory.objective_field("sdsd_interp", ..., lam=...)`, checked against this function in
tests/unit/test_field_rows_sdsd.py. Every `SDSDConfig` option (teacher weights, demo_rule,
divergence, top-k) applies; the teacher is a geometric mixture of two `Scores`
(`policies.base.geometric_mixture`: `FullScores` for tiny_gpt, `chunked.GeometricTarget` for the hf
policy, never [B, T, V]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.sdsd import SDSDConfig, demo_options, divergence_options
from mitigate.ops import aggregate, masked_mean
from mitigate.policies.base import geometric_mixture


@dataclass
class SDSDInterpConfig(SDSDConfig):
    name: str = opt("sdsd_interp", "registered objective name")
    lam: float = opt(0.5, "lambda: weight of the base without demonstration in the teacher's log-probs "
                          "(0 = sdsd, 1 = the base)", min=0.0, max=1.0)


def interpolated_teacher(teacher, base, lam: float):
    """The stop-gradient target softmax((1 - lam) log teacher + lam log base) on the same completions."""
    return geometric_mixture([teacher, base], [1.0 - lam, lam])


@register_objective("sdsd_interp", SDSDInterpConfig)
def sdsd_interp(batch: Batch, ctx: Context, cfg: SDSDInterpConfig) -> tuple[torch.Tensor, dict]:
    if cfg.estimator != "full_vocab":
        raise ValueError("sdsd_interp supports estimator 'full_vocab' only")
    demos, (teacher,) = ctx.teacher.demonstrations(batch, ctx, 1, **demo_options(cfg))
    has_demo = (demos[:, 0] >= 0).float()[:, None]
    mask = batch.mask * has_demo
    target = interpolated_teacher(teacher, batch.reference, cfg.lam)
    per_token = batch.divergence(target, cfg.divergence, **divergence_options(cfg))
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    return loss, {f"{cfg.divergence}_teacher": masked_mean(per_token.detach(), mask).item(),
                  "masked_prompts": 1.0 - has_demo.mean().item()}
