"""ot: push rollouts out of regions the group over-covers relative to the base model's correct set.

For prompt x, let mu = uniform over the group's correct rollouts and nu = uniform over a reference
set of correct base-model samples for x (drawn once per prompt and kept for the run). With
features phi(y) from the task (graph: concept one-hot and visited-node counts) and cost
C_ij = ||phi(y_i) - phi(r_j)||^2, entropic OT (POT, log-domain Sinkhorn, torch backend) gives dual
potentials f_i = d OT_eps(mu, nu) / d mu_i: the marginal cost of the mass at rollout i. Rollouts in
regions where the group has more mass than the base (a concept SDSD over-samples) get high f_i.
They act as a per-rollout penalty in a score-function term, centred over the group's correct set:

    R = agg_t  1[y_i correct] (f_i - mean_C f) log pi(y_{i,t} | x, y_{i,<t})

so coef * R lowers the probability of over-covered correct rollouts and raises that of
under-covered ones. Minimising OT_eps(mu_pi, nu) over pi is the target: the correct part of the
policy matches the base model's correct distribution, i.e. base ratios among correct outputs
(the RL fixed point). Potentials rather than a differentiable OT loss, because rollouts are
discrete samples: the gradient must flow through log pi, as in the policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot as pot
import torch

from mitigate.batch import Batch
from mitigate.config import opt
from mitigate.objectives.functional import aggregate
from mitigate.registry import register_regularizer

_TINY = 1e-9  # mass on excluded (incorrect) points so the log-domain solver stays finite


@dataclass
class OTConfig:
    name: str = "ot"
    coef: float = opt(0.5, "weight of the potential penalty in the loss", min=0.0)
    reference_samples: int = opt(32, "base-model samples per prompt for the reference set", min=1)
    reg: float = opt(0.05, "entropic regularisation epsilon of Sinkhorn (cost units)", min=1e-4)
    concept_weight: float = opt(0.5, "share of the cost from the concept one-hot (rest: visited nodes)",
                                min=0.0, max=1.0)


def _reference_features(batch: Batch, cfg: OTConfig) -> list[np.ndarray]:
    """Features of correct base-model samples per prompt, drawn the first time a prompt is seen."""
    store = batch.state.setdefault("ot_reference", {})
    missing = [q for q in batch.prompts if q not in store]
    if missing:
        n = cfg.reference_samples
        tokens, correct, concepts = batch.ref_samples(missing, n)
        feats = batch.task.rollout_features(tokens, concepts, cfg.concept_weight)
        for k, q in enumerate(missing):
            rows = slice(k * n, (k + 1) * n)
            store[q] = feats[rows][correct[rows]]
    return [store[q] for q in batch.prompts]


def sinkhorn_potentials(rollout_feats: torch.Tensor, rollout_mass: torch.Tensor, ref_feats: torch.Tensor,
                        ref_mass: torch.Tensor, reg: float) -> torch.Tensor:
    """Batched entropic OT between [P, G, d] rollouts and [P, R, d] references -> f [P, G]."""
    cost = torch.cdist(rollout_feats, ref_feats) ** 2
    res = pot.solve_batch(cost, reg=reg, a=rollout_mass, b=ref_mass, method="log_sinkhorn", grad="detach")
    return reg * res.potentials[0]  # POT returns the log-domain scalings log u; f = eps log u


@register_regularizer("ot", OTConfig)
def ot_penalty(batch: Batch, cfg: OTConfig) -> tuple[torch.Tensor, dict]:
    if "ot" not in batch.cache:
        P, G = len(batch.prompts), batch.group_size
        refs = _reference_features(batch, cfg)
        feats = batch.task.rollout_features(batch.tokens.cpu().numpy(), batch.concepts.cpu().numpy(),
                                            cfg.concept_weight)
        correct = batch.correct.cpu().numpy().reshape(P, G)
        R = max(1, max(len(r) for r in refs))
        ref_f = np.zeros((P, R, feats.shape[1]))
        ref_m = np.full((P, R), _TINY)
        for p, r in enumerate(refs):
            ref_f[p, :len(r)], ref_m[p, :len(r)] = r, 1.0
        roll_m = np.where(correct, 1.0, _TINY)
        # a group needs two correct rollouts to have a direction to push, and a reference to compare
        valid = (correct.sum(1) >= 2) & np.array([len(r) > 0 for r in refs])
        roll_m, ref_m = roll_m / roll_m.sum(1, keepdims=True), ref_m / ref_m.sum(1, keepdims=True)
        t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        f = sinkhorn_potentials(t(feats.reshape(P, G, -1)), t(roll_m), t(ref_f), t(ref_m), cfg.reg)
        use = torch.as_tensor(correct & valid[:, None])
        mean = (f * use).sum(1, keepdim=True) / use.sum(1, keepdim=True).clamp(min=1)
        centred = torch.where(use, f - mean, torch.zeros_like(f))
        spread = float(centred.pow(2).sum().div(use.sum().clamp(min=1)).sqrt())
        batch.cache["ot"] = (centred.reshape(-1).float().to(batch.tokens.device), float(valid.mean()), spread)
    penalty, valid_share, spread = batch.cache["ot"]
    per_token = penalty[:, None] * batch.token_logprobs()
    return aggregate(per_token, batch.mask, "token_mean"), {"groups_used": valid_share, "potential_std": spread}
