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
    gather_tokens,
    group_advantages,
    k3_kl,
    leave_one_out_demo_mean,
    leave_one_out_mean,
    masked_group_mean,
    masked_mean,
    pick_demonstrations,
    reverse_kl_anchor,
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


def _pick_demonstrations_as_recorded(group_index, correct, m, generator):
    """The tensor loop every recorded run drew its demonstrations with (before issue 28's list loop)."""
    out = torch.full((len(group_index), m), -1, dtype=torch.long)
    for g in torch.unique(group_index).tolist():
        members = torch.nonzero(group_index == g).flatten()
        good = members[correct[members]]
        if len(good) == 0:
            continue
        for i in members.tolist():
            pool = good[good != i] if len(good) > 1 else good
            out[i] = pool[torch.randint(len(pool), (m,), generator=generator)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_pick_demonstrations_draws_what_recorded_runs_drew(seed):
    g = torch.Generator().manual_seed(seed)
    size, n = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 20, (1,), generator=g))
    groups = torch.arange(n).repeat_interleave(size)
    if seed % 2:  # groups interleaved, as after a shuffle
        groups = groups[torch.randperm(len(groups), generator=g)]
    correct = torch.rand(len(groups), generator=g) < torch.rand(1, generator=g)
    m = int(torch.randint(1, 4, (1,), generator=g))
    expected = _pick_demonstrations_as_recorded(groups, correct, m, torch.Generator().manual_seed(seed))
    got = pick_demonstrations(groups, correct, m, torch.Generator().manual_seed(seed))
    assert got.dtype == expected.dtype and torch.equal(got, expected)


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


# ----------------------------------------------------------------------------- leave-one-out baselines

GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1])
INCLUDE = torch.tensor([True, True, False, True, True, False, False])


def test_leave_one_out_mean_and_group_mean():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    loo = leave_one_out_mean(values, GROUPS, INCLUDE)
    np.testing.assert_allclose(loo[:4].numpy(), [(2 + 4) / 2, (1 + 4) / 2, (1 + 2 + 4) / 3, (1 + 2) / 2])
    assert math.isnan(loo[4]) and loo[5] == 5 and loo[6] == 5  # the group's only included row has no other
    mean = masked_group_mean(values, GROUPS, INCLUDE)
    np.testing.assert_allclose(mean.numpy(), [7 / 3] * 4 + [5.0] * 3)
    assert math.isnan(masked_group_mean(values, GROUPS, torch.zeros(7, dtype=torch.bool))[0])


def test_leave_one_out_demo_mean_hand_computed():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0], [11.0, 12.0], [13.0, 14.0]])
    demos = torch.tensor([[1, 3], [0, 0], [3, 1], [1, 1], [4, 4], [4, 4], [4, 4]])
    out = leave_one_out_demo_mean(values, demos, GROUPS, INCLUDE)
    # row 0: rows 1 and 3; row 1's draws are both row 0 -> left out; row 3's draws (row 1) kept
    assert out[0] == pytest.approx((7 + 8) / 2)
    assert out[1] == pytest.approx(2.0)                    # row 0's draw of row 1 and both of row 3's left out
    assert out[2] == pytest.approx((1 + 2 + 3 + 4 + 7 + 8) / 6)  # an excluded row: nothing of it is used
    assert out[3] == pytest.approx((1 + 3 + 4) / 3)        # row 0's draw of row 3 left out
    assert math.isnan(out[4])                              # the only included row (its own demonstration)
    assert out[5] == pytest.approx(9.5) and out[6] == pytest.approx(9.5)


def test_leave_one_out_demo_mean_does_not_depend_on_the_row():
    """Row i's baseline is unchanged by anything computed from row i: its own values and the other
    rows' values against row i as their demonstration; it moves with everything else."""
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(3).repeat_interleave(5)
    include = torch.rand(15, generator=g) < 0.7
    demos = pick_demonstrations(groups, include, 3, g)
    values = torch.randn(15, 3, generator=g, dtype=torch.float64)
    base = leave_one_out_demo_mean(values, demos, groups, include)
    for i in range(15):
        touched = values.clone()
        touched[i] += 10.0
        touched[demos == i] += 10.0
        after = leave_one_out_demo_mean(touched, demos, groups, include)
        assert torch.equal(after[i].isnan(), base[i].isnan())
        if not base[i].isnan():
            assert after[i] == pytest.approx(float(base[i]), abs=1e-12)
            others = values.clone()
            others[(groups == groups[i]) & include & (torch.arange(15) != i)] += 1.0
            moved = leave_one_out_demo_mean(others, demos, groups, include)[i]
            assert moved == pytest.approx(float(base[i]) + 1.0, abs=1e-12)


# ----------------------------------------------------------------------------- the KL anchor

def test_reverse_kl_anchor_hand_computed():
    """k_t = KL(pi || ref) at each position; the surrogate adds log pi(y_t) times the KL of the
    positions after t (masked positions contribute nothing). Exactness of its gradient:
    tests/unit/test_theory_code.py."""
    lp = rand_logprobs(2, 3, 4, seed=21)
    ref = rand_logprobs(2, 3, 4, seed=22)
    tokens = torch.tensor([[0, 3, 1], [2, 2, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    sur, k = reverse_kl_anchor(token_divergence(lp, ref, "reverse_kl"), gather_tokens(lp, tokens), mask)
    p = lp.exp()
    kl = (p * (lp - ref)).sum(-1) * mask
    np.testing.assert_allclose(k.numpy(), kl.numpy(), atol=1e-12)
    tok = gather_tokens(lp, tokens)
    future = torch.stack([kl[:, t + 1:].sum(1) for t in range(3)], 1)
    np.testing.assert_allclose(sur.numpy(), (kl + tok * future * mask).numpy(), atol=1e-12)
    assert future[1, 1] == 0  # the masked last position adds no KL to come
