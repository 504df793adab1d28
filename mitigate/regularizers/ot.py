"""ot: push rollouts out of regions the group over-covers relative to the base model's correct set.

For prompt x, let mu = uniform over the group's correct rollouts and nu = uniform over a reference
set of correct base-model samples for x (drawn once per prompt and kept for the run). With
features phi(y) from the task (graph: concept one-hot and visited-node counts) and cost
C_ij = ||phi(y_i) - phi(r_j)||^2, entropic OT (POT, log-domain Sinkhorn, torch backend) gives dual
potentials f_i = d OT_eps(mu, nu) / d mu_i: the marginal cost of the mass at rollout i. Rollouts in
regions where the group has more mass than the base (a concept SDSD over-samples) get high f_i.
They act as a per-rollout penalty in a score-function term, against the potential's mean over the
reference set (f extended to any point by its soft c-transform):

    R = agg_t  1[y_i correct] (f(y_i) - mean_j f(r_j)) log pi(y_{i,t} | x, y_{i,<t})

so coef * R lowers the probability of correct rollouts in over-covered regions and raises that of
under-covered ones. The reference baseline matters: centring within the group would cancel the
push exactly when the group has collapsed onto one region, the case the term is for.

Minimising OT_eps(mu_pi, nu) over pi is the target: the correct part of the
policy matches the base model's correct distribution, i.e. base ratios among correct outputs
(the RL fixed point). Potentials rather than a differentiable OT loss, because rollouts are
discrete samples: the gradient must flow through log pi, as in the policy gradient.

Measured limitation (baselines/README.md): a score-function penalty only redistributes among the
rollouts that were sampled, so once a group has collapsed, the mass it removes from the
over-covered concept goes mostly to invalid paths, not to concepts the policy no longer samples.
`replay` > 0 fixes that: the same penalty, applied to some of the reference paths themselves and
scored by the student (off-policy), raises under-covered correct paths that no rollout reached:

    R_replay = agg_t (f(r_j) - mean_j' f(r_j')) log pi(r_{j,t} | x, r_{j,<t})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot as pot
import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context
from mitigate.ops import aggregate
from mitigate.regularizers.base import register_regularizer

_TINY = 1e-9  # mass on excluded (incorrect) points so the log-domain solver stays finite


@dataclass
class OTConfig(Section):
    name: str = opt("ot", "registered regularizer name")
    coef: float = opt(0.5, "weight of the potential penalty in the loss", min=0.0)
    reference_samples: int = opt(32, "base-model samples per prompt for the reference set", min=1)
    reg: float = opt(0.05, "entropic regularisation epsilon of Sinkhorn (cost units)", min=1e-4)
    concept_weight: float = opt(0.5, "share of the cost from the concept one-hot (rest: visited nodes)",
                                min=0.0, max=1.0)
    replay: float = opt(0.0, "weight of the same penalty on reference paths (off-policy: reaches unsampled "
                             "concepts)", min=0.0)
    replay_paths: int = opt(8, "reference paths per prompt scored for replay", min=1)


def sinkhorn_potentials(rollout_feats: torch.Tensor, rollout_mass: torch.Tensor, ref_feats: torch.Tensor,
                        ref_mass: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched entropic OT between [P, G, d] rollouts and [P, R, d] references.

    Returns the rollout-side dual potential at the rollouts [P, G] and at the reference points
    [P, R], both as the soft c-transform of the reference-side potential g:
    f(x) = -eps log sum_j exp((g_j - C(x, r_j)) / eps)  (POT returns g / eps = log v)."""
    cost = torch.cdist(rollout_feats, ref_feats) ** 2
    res = pot.solve_batch(cost, reg=reg, a=rollout_mass, b=ref_mass, method="log_sinkhorn", grad="detach")
    log_v = res.potentials[1][:, None, :]  # [P, 1, R]

    def c_transform(c):
        return -reg * torch.logsumexp(log_v - c / reg, -1)

    return c_transform(cost), c_transform(torch.cdist(ref_feats, ref_feats) ** 2)


@register_regularizer("ot", OTConfig)
class OTPenalty:
    """Instantiated once per run: holds the reference set (correct base-model samples per prompt,
    drawn the first time a prompt is seen) and this step's penalties (fixed across inner epochs)."""

    def __init__(self):
        self.reference: dict = {}  # prompt -> (features [R, d], tokens [R, T]) of correct base samples
        self._step: int | None = None
        self._penalty = self._replay = None

    def reference_set(self, batch: Batch, ctx: Context, cfg: OTConfig) -> list[tuple[np.ndarray, np.ndarray]]:
        missing = [q for q in batch.prompts if q not in self.reference]
        if missing:
            n = cfg.reference_samples
            tokens, correct, labels = ctx.reference_samples(missing, n)
            feats = ctx.task.rollout_features(tokens, labels, cfg.concept_weight)
            for k, q in enumerate(missing):
                rows = slice(k * n, (k + 1) * n)
                self.reference[q] = (feats[rows][correct[rows]], tokens[rows][correct[rows]])
        return [self.reference[q] for q in batch.prompts]

    def state_dict(self, prompts: list) -> dict[str, np.ndarray]:
        """The reference sets for a resume checkpoint, keyed by each prompt's position in `prompts`
        (the training pool), in the order they were drawn (the per-step caches are rebuilt)."""
        index = {q: i for i, q in enumerate(prompts)}
        out = {"order": np.array([index[q] for q in self.reference], dtype=np.int64)}
        for k, (feats, tokens) in enumerate(self.reference.values()):
            out[f"features.{k}"], out[f"tokens.{k}"] = feats, tokens
        return out

    def load_state_dict(self, state: dict[str, np.ndarray], prompts: list) -> None:
        self.reference = {prompts[int(i)]: (state[f"features.{k}"], state[f"tokens.{k}"])
                          for k, i in enumerate(state["order"])}

    def __call__(self, batch: Batch, ctx: Context, cfg: OTConfig) -> tuple[torch.Tensor, dict]:
        if self._step != ctx.step:
            self._step = ctx.step
            self._penalty, self._replay = _step_penalties(batch, ctx, cfg, self.reference_set(batch, ctx, cfg))
        penalty, valid_share, spread = self._penalty
        per_token = penalty[:, None] * batch.token_logprobs()
        loss = aggregate(per_token, batch.mask, "token_mean")
        scalars = {"groups_used": valid_share, "penalty_abs": spread}
        if cfg.replay > 0 and self._replay is not None:
            contexts, tokens, mask, ref_penalty = self._replay
            lp = ctx.policy.token_logprobs(contexts, tokens, mask)
            loss = loss + cfg.replay * aggregate(ref_penalty[:, None] * lp, mask, "token_mean")
            scalars["replay_paths"] = float(len(tokens))
        return loss, scalars


def _step_penalties(batch: Batch, ctx: Context, cfg: OTConfig, refs_and_tokens):
    """Per-rollout penalties (and the replay set) of one step, from the Sinkhorn potentials."""
    P, G = len(batch.prompts), batch.group_size
    refs = [r for r, _ in refs_and_tokens]
    feats = ctx.task.rollout_features(batch.tokens.cpu().numpy(), batch.labels.cpu().numpy(),
                                      cfg.concept_weight)
    correct = batch.correct.cpu().numpy().reshape(P, G)
    R = max(1, max(len(r) for r in refs))
    ref_f = np.zeros((P, R, feats.shape[1]))
    ref_m = np.full((P, R), _TINY)
    for p, r in enumerate(refs):
        ref_f[p, :len(r)], ref_m[p, :len(r)] = r, 1.0
    roll_m = np.where(correct, 1.0, _TINY)
    valid = correct.any(1) & np.array([len(r) > 0 for r in refs])  # something to compare
    roll_m, ref_m = roll_m / roll_m.sum(1, keepdims=True), ref_m / ref_m.sum(1, keepdims=True)
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    f_roll, f_ref = sinkhorn_potentials(t(feats.reshape(P, G, -1)), t(roll_m), t(ref_f), t(ref_m), cfg.reg)
    # baseline: the potential averaged over the reference set, so a group that sits entirely
    # in an over-covered region is still pushed out of it (a group mean would cancel that)
    baseline = (f_ref * t(ref_m > _TINY)).sum(1, keepdim=True) / t(ref_m > _TINY).sum(1, keepdim=True)
    use = torch.as_tensor(correct & valid[:, None])
    penalty = torch.where(use, f_roll - baseline, torch.zeros_like(f_roll))
    spread = float(penalty[use].abs().mean()) if use.any() else 0.0
    penalty = (penalty.reshape(-1).float().to(batch.tokens.device), float(valid.mean()), spread)
    replay = _replay_set(batch, ctx, cfg, refs_and_tokens, f_ref - baseline, valid) if cfg.replay > 0 else None
    return penalty, replay


def _replay_set(batch, ctx, cfg, refs_and_tokens, ref_penalty, valid):
    """Up to `replay_paths` reference paths per valid prompt with their penalties: negative on
    under-covered paths, so the score-function term raises them even when no rollout reached them."""
    contexts, rows, pens = [], [], []
    for p, (q, (_, toks)) in enumerate(zip(batch.prompts, refs_and_tokens)):
        if not valid[p] or len(toks) == 0:
            continue
        pick = torch.randperm(len(toks), generator=ctx.generator)[:cfg.replay_paths]
        for j in pick.tolist():
            contexts.append(q.tokens)
            rows.append(torch.as_tensor(toks[j]))
            pens.append(float(ref_penalty[p, j]))
    if not rows:
        return None
    tokens = torch.stack(rows).to(batch.tokens.device)  # sampled paths: already PAD after EOS
    mask = ctx.policy.completion_mask(tokens).float()
    return contexts, tokens, mask, torch.tensor(pens, device=tokens.device)
