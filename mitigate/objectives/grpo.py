"""GRPO: group-normalised advantages and a clipped importance ratio.

    A_i   = (r_i - mean_G r) / (std_G r + eps)           (std scaling switchable)
    rho_t = pi(y_t | .) / pi_old(y_t | .)
    L     = agg_t[ -min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i) ]

Options that the diversity-keeping RL literature adds to the same surrogate (defaults off):

- clip-higher: a separate upper clip range eps_high > eps_low (`clip_eps_high`), so that
  low-probability tokens with a positive advantage can grow further before the clip binds.
- Clip-Cov: the `cov_clip_frac` share of tokens with the largest centred covariance
  (log pi_t - mean log pi)(A_i - mean A) gets no gradient (their surrogate is detached).
- KL-Cov: the `cov_kl_frac` share of tokens with the largest covariance gets the penalty
  `cov_kl_coef` * |log pi_t - log pi_old,t|.

Both covariance options act on the tokens whose update would drive the entropy down fastest. The
KL leash to the frozen base model, beta * KL(pi || pi_base), is not here: the loop adds it to every
objective (`train.kl_coef`), so GRPO, SDSD and the mitigations share the same anchor. Fixed point
of the plain objective with the leash: pi(y) = p0(y) exp(A(y) / beta) / Z with A constant on the
correct set, so the base's ratios among correct outputs are kept.
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
    clip_eps: float = opt(0.2, "PPO clip range of the importance ratio (lower side, and upper unless "
                               "clip_eps_high is set)", min=0.0)
    clip_eps_high: float = opt(0.0, "upper clip range (clip-higher); 0: the same as clip_eps", min=0.0)
    scale_std: bool = opt(True, "divide group-centred rewards by the group std")
    cov_clip_frac: float = opt(0.0, "Clip-Cov: share of tokens with the largest log-prob/advantage covariance "
                                    "whose gradient is removed (0: off)", min=0.0, max=1.0)
    cov_kl_frac: float = opt(0.0, "KL-Cov: share of tokens with the largest covariance given the |log-ratio| "
                                  "penalty (0: off)", min=0.0, max=1.0)
    cov_kl_coef: float = opt(1.0, "KL-Cov penalty weight", min=0.0)
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)

    # added after results were recorded: summaries omit them at their defaults (`reproduce.objective_record`)
    _quiet_at_default = ("clip_eps_high", "cov_clip_frac", "cov_kl_frac", "cov_kl_coef")


def top_covariance(logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, frac: float) -> torch.Tensor:
    """[B, T] bool: the ceil(frac * n) valid tokens with the largest centred covariance
    (log pi_t - mean log pi)(A - mean A), means over valid tokens (ties broken by position)."""
    valid = mask > 0
    n = int(valid.sum())
    k = min(n, int(torch.ceil(torch.tensor(frac * n)).item())) if frac > 0 else 0
    out = torch.zeros_like(valid)
    if k == 0:
        return out
    lp = logp.detach()
    a = adv[:, None].expand_as(lp)
    cov = (lp - lp[valid].mean()) * (a - a[valid].mean())
    cov = torch.where(valid, cov, torch.full_like(cov, -torch.inf))
    out.view(-1)[torch.topk(cov.reshape(-1), k).indices] = True
    return out


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_low: float,
                      clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] per-token loss -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A), [B, T] clipped)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    loss = -torch.minimum(ratio * a, ratio.clamp(1 - clip_low, 1 + clip_high) * a)
    clipped = (ratio < 1 - clip_low) | (ratio > 1 + clip_high)
    return loss, clipped


def policy_gradient(batch: Batch, adv: torch.Tensor, cfg: GRPOConfig) -> tuple[torch.Tensor, dict]:
    """The GRPO surrogate for given per-rollout advantages, with the config's clip and covariance
    options: the one update rule every GRPO-family row shares."""
    logp = batch.token_logprobs()
    high = cfg.clip_eps_high or cfg.clip_eps
    per_token, clipped = clipped_surrogate(logp, batch.old_token_logprobs, adv, cfg.clip_eps, high)
    scalars = {"clip_frac": masked_mean(clipped.float(), batch.mask).item()}
    if cfg.cov_clip_frac > 0:
        frozen = top_covariance(logp, adv, batch.mask, cfg.cov_clip_frac)
        detached, _ = clipped_surrogate(logp.detach(), batch.old_token_logprobs, adv, cfg.clip_eps, high)
        per_token = torch.where(frozen, detached, per_token)
        scalars["cov_clipped_frac"] = masked_mean(frozen.float(), batch.mask).item()
    if cfg.cov_kl_frac > 0:
        penalised = top_covariance(logp, adv, batch.mask, cfg.cov_kl_frac).float()
        per_token = per_token + cfg.cov_kl_coef * penalised * (logp - batch.old_token_logprobs).abs()
        scalars["cov_kl_frac_tokens"] = masked_mean(penalised, batch.mask).item()
    return aggregate(per_token, batch.mask, cfg.aggregation), scalars


@register_objective("grpo", GRPOConfig)
def grpo(batch: Batch, ctx: Context, cfg: GRPOConfig) -> tuple[torch.Tensor, dict]:
    adv, zero_std = group_advantages(batch.rewards, batch.group_index, cfg.scale_std)
    loss, scalars = policy_gradient(batch, adv, cfg)
    return loss, {**scalars, "zero_std_groups": zero_std.float().mean().item()}
