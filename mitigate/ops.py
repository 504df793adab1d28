"""Pure tensor math behind the objectives and regularizers: divergences, aggregation, advantages,
the KL estimator, gathers, masks. Tensors in, keyword settings, tensors out; each function is checked
against hand-computed values in tests/unit/test_ops.py. Shapes: B rollouts, T positions, V vocabulary."""

from __future__ import annotations

import math

import torch

DIVERGENCES = ("reverse_kl", "forward_kl", "jsd")
# the self-distillation objectives' choices: the above plus the generalised JSD with a weight alpha
DISTILL_DIVERGENCES = (*DIVERGENCES, "gjsd")
TOPK_OF = ("teacher", "student")
AGGREGATIONS = ("token_mean", "seq_mean", "seq_sum")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    token_mean: sum over all tokens / number of tokens (every token weighs the same);
    seq_mean:   mean over each rollout's tokens, then over rollouts (original GRPO);
    seq_sum:    sum over each rollout's tokens, mean over rollouts (sequence-level objective).
    """
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "seq_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "seq_sum":
        return (per_token * mask).sum(1).mean()
    raise ValueError(f"unknown aggregation '{mode}'; allowed: {', '.join(AGGREGATIONS)}")


def group_advantages(rewards: torch.Tensor, group_index: torch.Tensor, scale_std: bool = True,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages A_i = (r_i - mean_group) / (std_group + eps) (std optional).

    Returns (advantages [B], zero_std [P] bool: groups whose rewards are all equal)."""
    n = int(group_index.max()) + 1

    def zeros():  # on the rewards' device and dtype (GPU, float64)
        return torch.zeros(n, dtype=rewards.dtype, device=rewards.device)

    count = zeros().index_add_(0, group_index, torch.ones_like(rewards))
    mean = zeros().index_add_(0, group_index, rewards) / count
    centred = rewards - mean[group_index]
    var = zeros().index_add_(0, group_index, centred**2) / (count - 1).clamp(min=1)
    std = var.sqrt()
    adv = centred / (std[group_index] + eps) if scale_std else centred
    return adv, std < 1e-8


KL_ESTIMATORS = ("full_vocab", "k3")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) on sampled tokens: exp(d) - d - 1, d = ref - logp.

    Its *value* is unbiased for KL(pi || ref), but used as a loss its gradient is that of the
    forward KL(ref || pi) (Shah et al. 2025): kept as a named option for comparison with other
    trainers, not as the default anchor."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def reverse_kl_anchor(kl: torch.Tensor, token_logprobs: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate [B, T] whose gradient, summed over a rollout y ~ pi, is unbiased for the gradient
    of the sequence-level reverse KL(pi || ref) to the frozen reference.

        KL(pi || ref) = E_y sum_t k_t,   k_t = sum_v pi(v | y_<t) (log pi(v | y_<t) - log ref(v | y_<t))
        grad          = E_y sum_t [ grad k_t + grad log pi(y_t | y_<t) * sum_{t' > t} k_t' ]

    The first term is exact over the vocabulary at every visited prefix; the second (the KL still
    to come after choosing y_t) is a score-function term, needed because the prefixes themselves
    are drawn from pi. Dropping it (a per-token KL loss alone) changes the fixed point away from
    the RL optimum p0(y) exp(r(y) / beta) / Z. Inputs: `kl` = k_t [B, T] with grad (the policy's
    full-vocabulary reverse KL to the reference, `Scores.divergence`), `token_logprobs` =
    log pi(y_t | y_<t) [B, T] with grad. Returns (surrogate [B, T], k_t [B, T] masked, detached).
    """
    k = kl * mask
    future = (k.detach().flip(-1).cumsum(-1).flip(-1) - k.detach())  # sum over t' > t
    return k + token_logprobs * future * mask, k.detach()


def token_divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, alpha: float = 0.5) -> torch.Tensor:
    """Full-vocabulary divergence at every position: [B, T, V] log-probs -> [B, T].

    reverse_kl: KL(student || teacher) = sum_v p_s (log p_s - log p_t)   (mode seeking)
    forward_kl: KL(teacher || student) = sum_v p_t (log p_t - log p_s)   (mass covering)
    jsd:        (KL(p_s || m) + KL(p_t || m)) / 2, m = (p_s + p_t) / 2
    gjsd:       the generalised JSD with weight `alpha` (`generalised_jsd`); alpha is read by gjsd only
    """
    if kind == "reverse_kl":
        return (student.exp() * (student - teacher)).sum(-1)
    if kind == "forward_kl":
        return (teacher.exp() * (teacher - student)).sum(-1)
    if kind == "jsd":
        m = torch.logsumexp(torch.stack([student, teacher]), 0) - math.log(2.0)
        return 0.5 * ((student.exp() * (student - m)).sum(-1) + (teacher.exp() * (teacher - m)).sum(-1))
    if kind == "gjsd":
        return generalised_jsd(student, teacher, alpha)
    raise ValueError(f"unknown divergence '{kind}'; allowed: {', '.join(DISTILL_DIVERGENCES)}")


def generalised_jsd(student: torch.Tensor, teacher: torch.Tensor, alpha: float) -> torch.Tensor:
    """The generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024) as TRL's
    `generalized_jsd_loss` and the public SDPO trainers compute it, [B, T, V] log-probs -> [B, T]:

        m = alpha p_t + (1 - alpha) p_s
        D = alpha KL(p_t || m) + (1 - alpha) KL(p_s || m)      for 0 < alpha < 1
        D = KL(p_t || p_s) = forward_kl                          at alpha = 0
        D = KL(p_s || p_t) = reverse_kl                          at alpha = 1

    The end points are those conventions' special cases, taken as they are: the formula itself goes
    to 0 at both ends (D ~ alpha KL(p_t || p_s) as alpha -> 0 and ~ (1 - alpha) KL(p_s || p_t) as
    alpha -> 1), so D is NOT continuous at 0 and 1; D / (alpha (1 - alpha)) would be. alpha = 0.5
    is `jsd` (the same value, another float summation order)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"gjsd weight alpha must lie in [0, 1], got {alpha}")
    if alpha == 0.0:
        return token_divergence(student, teacher, "forward_kl")
    if alpha == 1.0:
        return token_divergence(student, teacher, "reverse_kl")
    m = torch.logaddexp(teacher + math.log(alpha), student + math.log1p(-alpha))
    return (alpha * (teacher.exp() * (teacher - m)).sum(-1)
            + (1.0 - alpha) * (student.exp() * (student - m)).sum(-1))


def topk_tail(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[..., V] log-probs coarsened to k + 1 buckets: the k tokens `ids` [..., k] and one tail
    bucket holding the remaining mass 1 - sum_k p (floored at 1e-30, where the k tokens hold it all)."""
    top = logprobs.gather(-1, ids)
    total = torch.logsumexp(top, -1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(total)).clamp(min=1e-30))
    return torch.cat([top, tail], -1)


def topk_tail_divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, k: int, of: str = "teacher",
                         alpha: float = 0.5) -> torch.Tensor:
    """`token_divergence` between student and teacher coarsened to k + 1 buckets: the k most likely
    tokens of the teacher's (`of="teacher"`, what public SDPO trainers keep) or of the student's
    (`of="student"`; the choice of tokens carries no gradient) distribution at each position, plus
    one tail bucket with the remaining mass of each. [B, T, V] log-probs -> [B, T]. By the data
    processing inequality it never exceeds the full divergence, and it equals it at k = V (a tail
    of zero mass on both sides contributes 0). Without the tail bucket the student could lower the
    loss by moving mass off the top-k tokens."""
    if of not in TOPK_OF:
        raise ValueError(f"unknown top-k source '{of}'; allowed: {', '.join(TOPK_OF)}")
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    k = min(k, student.shape[-1])
    ids = (teacher if of == "teacher" else student).detach().topk(k, -1).indices
    return token_divergence(topk_tail(student, ids), topk_tail(teacher.detach(), ids), kind, alpha)


def divergence_with(student: torch.Tensor, teacher: torch.Tensor, kind: str, alpha: float = 0.5, topk: int = 0,
                    topk_of: str = "teacher") -> torch.Tensor:
    """The one entry for a divergence with its options: full vocabulary when topk = 0, else
    `topk_tail_divergence`. [B, T, V] log-probs -> [B, T]."""
    if topk:
        return topk_tail_divergence(student, teacher, kind, topk, topk_of, alpha)
    return token_divergence(student, teacher, kind, alpha)


def token_entropy(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every position: [B, T, V] log-probs -> [B, T]."""
    return -(logprobs.exp() * logprobs).sum(-1)


def mixture_log_weights(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-weights [M, B, T] of M sequence-level distributions' token-level mixture: at position t,
    component m weighs by how well it explains the prefix, w_m(t) ∝ p_m(y_<t) = prod_{t' < t} p_m(y_t').
    token_logprobs [M, B, T]: log p_m(y_t | y_<t) of each component (positions with mask 0 count as 1)."""
    tok = token_logprobs * mask
    prefix = tok.cumsum(-1) - tok  # log p_m(y_<t): exclusive prefix sum
    return prefix - torch.logsumexp(prefix, 0, keepdim=True)


def log_mixture(log_weights: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """log sum_m w_m p_m(v): log-weights [M, B, T] and [M, B, T, V] log-probs -> [B, T, V]."""
    return torch.logsumexp(log_weights.unsqueeze(-1) + logprobs, 0)


def sampled_token_reverse_kl(token_logp: torch.Tensor, teacher_token_logp: torch.Tensor) -> torch.Tensor:
    """Score-function surrogate for the reverse KL on the sampled token only: its gradient,
    (log p_s(y_t) - log p_t(y_t)) * grad log p_s(y_t), is unbiased for grad KL(p_s || p_t) at t."""
    return (token_logp - teacher_token_logp).detach() * token_logp


def gather_tokens(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p of the given tokens: [B, T, V] x [B, T] -> [B, T]."""
    return logprobs.gather(-1, tokens.to(logprobs.device).unsqueeze(-1)).squeeze(-1)


def centre_among_correct(values: torch.Tensor, group_index: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """values - mean over the correct rollouts of the same group; 0 for incorrect rollouts."""
    n = int(group_index.max()) + 1
    w = correct.float()
    total = torch.zeros(n, device=values.device).index_add_(0, group_index, values * w)
    count = torch.zeros(n, device=values.device).index_add_(0, group_index, w)
    mean = total / count.clamp(min=1)
    return (values - mean[group_index]) * w


def pick_demonstrations(group_index: torch.Tensor, correct: torch.Tensor, m: int,
                        generator: torch.Generator) -> torch.Tensor:
    """For each rollout, m demonstrations drawn uniformly (with replacement) from the correct
    rollouts of its group other than itself; itself only when it is the group's sole correct
    rollout. Returns [B, m] rollout indices, -1 for rollouts whose group has no correct one."""
    out = [[-1] * m for _ in range(len(group_index))]
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_index.tolist()):
        members.setdefault(g, []).append(i)
    ok = correct.tolist()
    for g in sorted(members):  # the draw order of the original tensor loop: groups ascending, rows in order
        good = [i for i in members[g] if ok[i]]
        if not good:
            continue
        for i in members[g]:
            pool = [j for j in good if j != i] if len(good) > 1 else good
            out[i] = [pool[k] for k in torch.randint(len(pool), (m,), generator=generator).tolist()]
    return torch.tensor(out, dtype=torch.long).reshape(len(group_index), m)


def leave_one_out_mean(values: torch.Tensor, group_index: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
    """For each row i, the mean of `values` over the OTHER rows of its group with include = True
    (a row's own value never enters its own baseline); NaN where there is no such row."""
    n = int(group_index.max()) + 1
    w = include.to(values.dtype)
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, values * w)
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, w)
    others_total = total[group_index] - values * w
    others_count = count[group_index] - w
    return torch.where(others_count > 0, others_total / others_count.clamp(min=1), torch.full_like(values, math.nan))


def masked_group_mean(values: torch.Tensor, group_index: torch.Tensor, include: torch.Tensor) -> torch.Tensor:
    """For each row, the mean of `values` over the rows of its group with include = True (NaN if none)."""
    n = int(group_index.max()) + 1
    w = include.to(values.dtype)
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, values * w)
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, w)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))[group_index]


def leave_one_out_demo_mean(values: torch.Tensor, demos: torch.Tensor, group_index: torch.Tensor,
                            include: torch.Tensor) -> torch.Tensor:
    """A baseline for each row i that does not depend on row i's rollout: the mean of
    values[j, m] over the other rows j of its group with include = True and the columns m whose
    demonstration demos[j, m] is not row i. values [B, M] are per-demonstration quantities (each
    row's pcmi against each of its M demonstrations), demos [B, M] their row indices
    (`pick_demonstrations`; indices outside the batch or in another group are no row's rollout).
    Leaving out row i's own values is not enough when demonstrations are shared: another row's pcmi
    against row i as its demonstration depends on row i's rollout. NaN where no value is left."""
    n = int(group_index.max()) + 1
    w = include.to(values.dtype)[:, None].expand_as(values)
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, (values * w).sum(1))
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, group_index, w.sum(1))
    rows = torch.arange(len(values), device=values.device)[:, None]
    # values computed with another row OF THE SAME GROUP as the demonstration (a demonstration from
    # another group or from outside the batch, `mitigate.objectives.demos`, depends on no row here)
    demos, group_index = demos.to(values.device), group_index.to(values.device)
    inside = (demos >= 0) & (demos < len(values))
    same = group_index[demos.clamp(0, len(values) - 1)] == group_index[:, None]
    via = inside & same & (demos != rows)
    target = torch.where(via, demos, rows).flatten()
    via_w = (w * via).flatten()
    via_total = torch.zeros(len(values), dtype=values.dtype, device=values.device).index_add_(
        0, target, values.flatten() * via_w)
    via_count = torch.zeros(len(values), dtype=values.dtype, device=values.device).index_add_(0, target, via_w)
    others_total = total[group_index] - (values * w).sum(1) - via_total
    others_count = count[group_index] - w.sum(1) - via_count
    return torch.where(others_count > 0.5, others_total / others_count.clamp(min=1),
                       torch.full_like(others_total, math.nan))
