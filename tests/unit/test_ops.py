"""The pure tensor functions behind the objectives, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mitigate.objectives.sdsd_marginal import marginal_teacher_logprobs
from mitigate.ops import (
    aggregate,
    centre_among_correct,
    group_advantages,
    k3_kl,
    masked_mean,
    pick_demonstrations,
    sampled_token_reverse_kl,
    token_divergence,
)

torch.set_default_dtype(torch.float32)


def rand_logprobs(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(*shape, generator=g, dtype=torch.float64), -1)


# ----------------------------------------------------------------------------- aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode,expected", [
    ("token_mean", (1 + 2 + 4) / 3),
    ("seq_mean", ((1 + 2) / 2 + 4) / 2),
    ("seq_sum", ((1 + 2) + 4) / 2),
])
def test_aggregate(mode, expected):
    assert float(aggregate(PER_TOKEN, MASK, mode)) == pytest.approx(expected)


def test_aggregate_unknown_mode_lists_allowed():
    with pytest.raises(ValueError, match="token_mean.*seq_mean.*seq_sum"):
        aggregate(PER_TOKEN, MASK, "mean")


def test_masked_mean_empty_mask_is_zero():
    assert float(masked_mean(PER_TOKEN, torch.zeros_like(MASK))) == 0.0
    assert float(masked_mean(PER_TOKEN, MASK)) == pytest.approx(7 / 3)


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1])
    groups = torch.arange(3).repeat_interleave(4)
    adv, zero = group_advantages(rewards, groups, scale_std=True)
    # group 0: mean 1/4, unbiased var (0.75^2 + 3 * 0.25^2) / 3 = 0.25 -> std 0.5
    np.testing.assert_allclose(adv[:4].numpy(), np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6), rtol=1e-6)
    # group 1: all equal -> zero advantage, flagged
    assert adv[4:8].abs().max() == 0.0
    # group 2: mean 1/2, var 4 * 0.25 / 3 = 1/3
    np.testing.assert_allclose(adv[8:].numpy(), np.array([-0.5, 0.5, -0.5, 0.5]) / (math.sqrt(1 / 3) + 1e-6),
                               rtol=1e-6)
    assert zero.tolist() == [False, True, False]
    raw, zero2 = group_advantages(rewards, groups, scale_std=False)
    np.testing.assert_allclose(raw.numpy(), [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, -0.5, 0.5, -0.5, 0.5])
    assert zero2.tolist() == zero.tolist()


def test_group_advantages_interleaved_groups_match_numpy():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (40,), generator=g).float()
    groups = torch.randperm(40, generator=g) % 5
    adv, zero = group_advantages(rewards, groups)
    r, gi = rewards.numpy(), groups.numpy()
    for k in range(5):
        sel = gi == k
        std = r[sel].std(ddof=1)
        expect = (r[sel] - r[sel].mean()) / (std + 1e-6)
        np.testing.assert_allclose(adv[sel].numpy(), expect, rtol=1e-5, atol=1e-6)
        assert bool(zero[k]) == (std == 0)
        assert abs(float(adv[sel].sum())) < 1e-4  # centred within each group


def test_group_advantages_all_zero_std():
    adv, zero = group_advantages(torch.zeros(8), torch.arange(2).repeat_interleave(4))
    assert adv.abs().max() == 0 and zero.all()


# ----------------------------------------------------------------------------- k3

def test_k3_kl_formula_and_sign():
    logp = rand_logprobs(4, 6, seed=1)
    ref = rand_logprobs(4, 6, seed=2)
    k3 = k3_kl(logp, ref)
    d = ref - logp
    np.testing.assert_allclose(k3.numpy(), (torch.exp(d) - d - 1).numpy())
    assert (k3 >= 0).all()
    assert k3_kl(logp, logp).abs().max() == 0


def test_k3_kl_is_unbiased_for_kl():
    """E_{y ~ pi}[k3(y)] = sum_y pi (ref/pi - log(ref/pi) - 1) = KL(pi || ref) exactly."""
    logp = rand_logprobs(3, 5, seed=3)
    ref = rand_logprobs(3, 5, seed=4)
    expect = (logp.exp() * k3_kl(logp, ref)).sum(-1)
    kl = (logp.exp() * (logp - ref)).sum(-1)
    np.testing.assert_allclose(expect.numpy(), kl.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- divergences

def test_divergences_on_two_tokens():
    s = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    t = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    m = (0.375, 0.625)
    jsd = 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
                 + 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1]))
    assert float(token_divergence(s, t, "reverse_kl")) == pytest.approx(rev, abs=1e-12)
    assert float(token_divergence(s, t, "forward_kl")) == pytest.approx(fwd, abs=1e-12)
    assert float(token_divergence(s, t, "jsd")) == pytest.approx(jsd, abs=1e-8)  # log 2 is a float32 constant
    assert rev != pytest.approx(fwd)  # the direction matters


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divergences_match_explicit_formulas(seed):
    s = rand_logprobs(3, 4, 7, seed=seed)
    t = rand_logprobs(3, 4, 7, seed=seed + 100)
    ps, pt = s.exp().numpy(), t.exp().numpy()
    rev = (ps * np.log(ps / pt)).sum(-1)
    fwd = (pt * np.log(pt / ps)).sum(-1)
    m = (ps + pt) / 2
    jsd = 0.5 * (ps * np.log(ps / m)).sum(-1) + 0.5 * (pt * np.log(pt / m)).sum(-1)
    np.testing.assert_allclose(token_divergence(s, t, "reverse_kl").numpy(), rev, rtol=1e-10)
    np.testing.assert_allclose(token_divergence(s, t, "forward_kl").numpy(), fwd, rtol=1e-10)
    np.testing.assert_allclose(token_divergence(s, t, "jsd").numpy(), jsd, rtol=1e-6)
    assert (jsd <= math.log(2) + 1e-12).all()
    np.testing.assert_allclose(token_divergence(s, t, "jsd").numpy(), token_divergence(t, s, "jsd").numpy())
    for kind in ("reverse_kl", "forward_kl", "jsd"):
        assert token_divergence(s, s, kind).abs().max() < 1e-7


def test_divergence_float32_gradient_and_unknown_kind():
    s = rand_logprobs(2, 3, 5, seed=7).float().requires_grad_()
    t = rand_logprobs(2, 3, 5, seed=8).float()
    token_divergence(s, t, "reverse_kl").sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="reverse_kl, forward_kl, jsd"):
        token_divergence(s, t, "kl")


def test_sampled_token_reverse_kl_gradient_is_unbiased():
    """sum_y p(y) grad[(log p(y) - log q(y)).detach() * log p(y)] = grad KL(p || q)."""
    logits = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    q = rand_logprobs(6, seed=9)
    logp = torch.log_softmax(logits, -1)
    surrogate = sum(logp[y].exp().detach() * sampled_token_reverse_kl(logp[y], q[y]) for y in range(6))
    (g_sur,) = torch.autograd.grad(surrogate, logits)
    logp = torch.log_softmax(logits, -1)
    (g_kl,) = torch.autograd.grad((logp.exp() * (logp - q)).sum(), logits)
    np.testing.assert_allclose(g_sur.numpy(), g_kl.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- demonstrations

def test_pick_demonstrations():
    groups = torch.arange(3).repeat_interleave(4)
    correct = torch.tensor([True, True, False, True,     # group 0: three correct
                            False, False, False, False,  # group 1: none
                            False, True, False, False])  # group 2: a sole correct one
    demos = pick_demonstrations(groups, correct, 32, torch.Generator().manual_seed(0))
    assert demos.shape == (12, 32)
    assert (demos[4:8] == -1).all()
    for i in range(4):
        picked = set(demos[i].tolist())
        allowed = {0, 1, 3} - {i}
        assert picked <= allowed
        assert picked == allowed  # 32 uniform draws cover both/all options
    for i in range(8, 12):
        assert (demos[i] == 9).all()  # the sole correct rollout, itself included for row 9
    again = pick_demonstrations(groups, correct, 32, torch.Generator().manual_seed(0))
    assert torch.equal(demos, again)


def test_pick_demonstrations_interleaved_groups():
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    correct = torch.tensor([True, False, True, False, False, True])
    demos = pick_demonstrations(groups, correct, 8, torch.Generator().manual_seed(1))
    assert set(demos[0].tolist()) == {2} and set(demos[2].tolist()) == {0}
    assert set(demos[4].tolist()) <= {0, 2}
    assert (demos[[1, 3, 5]] == 5).all()


# ----------------------------------------------------------------------------- sdsd_marginal

def test_marginal_teacher_single_demo_is_the_teacher():
    lp = rand_logprobs(1, 3, 5, 7, seed=11)
    tokens = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 5)
    out = marginal_teacher_logprobs(lp, tokens, mask)
    np.testing.assert_allclose(out.numpy(), lp[0].numpy(), atol=1e-12)


def test_marginal_teacher_mixture_weights():
    M, B, T, V = 3, 2, 4, 6
    lp = rand_logprobs(M, B, T, V, seed=12)
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    out = marginal_teacher_logprobs(lp, tokens, mask)
    # normalised at every position
    np.testing.assert_allclose(torch.logsumexp(out, -1).numpy(), 0.0, atol=1e-12)
    p = lp.exp().numpy()
    # t = 0: no prefix yet -> uniform weights, the mixture is the mean of the teachers' probabilities
    np.testing.assert_allclose(out[:, 0].exp().numpy(), p[:, :, 0].mean(0), atol=1e-12)
    # t > 0: weights proportional to each teacher's probability of the (unmasked) prefix
    tok_p = np.take_along_axis(p, tokens.numpy()[None, :, :, None].repeat(M, 0), -1)[..., 0]  # [M, B, T]
    for b in range(B):
        for t in range(T):
            prefix = [s for s in range(t) if mask[b, s] > 0]
            w = np.prod(tok_p[:, b, prefix], axis=1) if prefix else np.ones(M)
            w = w / w.sum()
            np.testing.assert_allclose(out[b, t].exp().numpy(), (w[:, None] * p[:, b, t]).sum(0), atol=1e-12)


def test_marginal_teacher_identical_teachers_is_identity():
    one = rand_logprobs(1, 2, 3, 5, seed=13)
    lp = one.expand(4, -1, -1, -1)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    out = marginal_teacher_logprobs(lp, tokens, torch.ones(2, 3))
    np.testing.assert_allclose(out.numpy(), one[0].numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- sdsd_cmi

def test_centre_among_correct():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    correct = torch.tensor([True, True, False, True, False, False, False, False, False, True])
    out = centre_among_correct(values, groups, correct)
    m = 7 / 3
    np.testing.assert_allclose(out.numpy(), [1 - m, 2 - m, 0, 4 - m, 0, 0, 0, 0, 0, 0], atol=1e-6)
    for g in range(3):
        sel = (groups == g) & correct
        assert abs(float(out[sel].sum())) < 1e-5
