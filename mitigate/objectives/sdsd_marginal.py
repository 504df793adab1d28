"""sdsd_marginal: SDSD against a teacher marginalised over M demonstrations.

The teacher is the arithmetic mixture of the M demonstration-conditioned teachers at the sequence
level, q(y) = (1/M) sum_m p(y | x, y*_m). Its exact token-level conditionals weight demonstration
m at position t by how well its teacher explains the student's prefix:

    q(v | x, y_<t) = sum_m w_m(t) p(v | x, y*_m, y_<t),   w_m(t) ∝ p(y_<t | x, y*_m)
    L = agg_t D( pi(. | x, y_<t) || q(. | x, y_<t) )                 (D = reverse KL by default)

Fixed point: SDSD's geometric mean of teachers becomes a geometric mean of M-mixtures,
exp(E log (1/M) sum_m T[y*_m, y]) / Z (mitigate.theory.marginal_teacher). With a Bayes-consistent
teacher, E_{y*} p(y|x,y*) = p(y|x,C), so as M grows the target approaches the ratio-preserving
p0(y | x, C). A side effect that matters on a network: a rollout that left a demonstration's
concept is scored mostly by the demonstrations it resembles, not by a teacher it contradicts.
M = 1 is exactly `sdsd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.sdsd import SDSDConfig, demo_options, divergence_options
from mitigate.ops import aggregate, gather_tokens, log_mixture, masked_mean, mixture_log_weights
from mitigate.policies.base import mixture


@dataclass
class SDSDMarginalConfig(SDSDConfig):
    name: str = opt("sdsd_marginal", "registered objective name")
    M: int = opt(4, "demonstrations in the teacher mixture", min=1)


def marginal_teacher_logprobs(teacher_logprobs: torch.Tensor, tokens: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
    """[M, B, T, V] per-demonstration teacher log-probs -> [B, T, V] log-probs of the mixture
    whose weight on demonstration m at position t is softmax_m(log p_m(y_<t)). The full-tensor
    form of what the objective computes through `Scores` (`ops.mixture_log_weights`, `ops.log_mixture`)."""
    tok = gather_tokens(teacher_logprobs, tokens.expand(teacher_logprobs.shape[0], -1, -1))  # [M, B, T]
    return log_mixture(mixture_log_weights(tok, mask), teacher_logprobs)


@register_objective("sdsd_marginal", SDSDMarginalConfig)
def sdsd_marginal(batch: Batch, ctx: Context, cfg: SDSDMarginalConfig) -> tuple[torch.Tensor, dict]:
    if cfg.estimator != "full_vocab":
        raise ValueError("sdsd_marginal supports estimator 'full_vocab' only")
    demos, per_demo = ctx.teacher.demonstrations(batch, ctx, cfg.M, **demo_options(cfg))
    log_w = mixture_log_weights(torch.stack([t.token_logprobs() for t in per_demo]), batch.mask)
    teacher = mixture(per_demo, log_w)
    has_demo = (demos[:, 0] >= 0).float()[:, None]
    mask = batch.mask * has_demo
    per_token = batch.divergence(teacher, cfg.divergence, **divergence_options(cfg))
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    return loss, {f"{cfg.divergence}_teacher": masked_mean(per_token.detach(), mask).item(),
                  "masked_prompts": 1.0 - has_demo.mean().item()}
