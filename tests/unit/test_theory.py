"""Exact theory on finite output spaces: RL preserves ratios, SDSD tilts and compounds, mitigations."""

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

from mitigate import theory as th
from mitigate.theory import (
    EXAMPLE_CORRECT,
    EXAMPLE_P0,
    cmi_reweighted_optimum,
    cmi_reweighting_error,
    copy_kernel_teacher,
    demo_distribution,
    expected_pcmi,
    marginal_teacher,
    marginal_teacher_bias,
    max_log_ratio_error,
    rl_optimum,
    sdsd_iterate,
    sdsd_optimum,
)

P0, C = EXAMPLE_P0, EXAMPLE_CORRECT
GROUPS = np.array([0, 0, 1, 1, 2, 3, 3])          # concepts: correct ones pure, incorrect ones pure


def ratios(p, correct):
    q = p[correct]
    return q[:, None] / q[None, :]


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_rl_optimum_preserves_ratios(beta):
    p = rl_optimum(P0, C, beta)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ratios(p, C), ratios(P0, C), rtol=1e-9, atol=0)
    assert max_log_ratio_error(p, P0, C) < 1e-9
    pc = P0[C].sum()                                  # and moves exactly the KL-leashed mass onto C
    assert p[C].sum() == pytest.approx(pc * np.exp(1 / beta) / (pc * np.exp(1 / beta) + 1 - pc), rel=1e-12)


def _random_problem(seed, n=6):
    rng = np.random.default_rng(seed)
    p0 = rng.dirichlet(np.ones(n))
    correct = rng.random(n) < 0.6
    correct[:2] = True
    T = rng.dirichlet(np.ones(n), size=n)
    return p0, correct, T


@pytest.mark.parametrize("case", ["random0", "random1", "copy", "copy_groups"])
def test_sdsd_closed_form_matches_numerical_minimisation(case):
    if case.startswith("random"):
        p0, correct, T = _random_problem(int(case[-1]))
    else:
        p0, correct = P0, C
        T = copy_kernel_teacher(P0, 0.5, groups=GROUPS if case == "copy_groups" else None)
    d = demo_distribution(p0, correct)

    def objective(theta):                             # E_{y*~d} KL(q || T[y*]), written out directly
        q = softmax(theta)
        logq = np.log(q)
        f = sum(d[j] * np.sum(q * (logq - np.log(T[j]))) for j in range(len(d)))
        dfdq = sum(d[j] * (logq + 1 - np.log(T[j])) for j in range(len(d)))
        return f, q * (dfdq - q @ dfdq)

    res = minimize(objective, np.zeros(len(p0)), jac=True, method="BFGS", options={"gtol": 1e-13})
    q_num = softmax(res.x)
    q = sdsd_optimum(p0, correct, T)
    assert np.max(np.abs(q - q_num)) < 1e-6
    # equivalently p0 exp(E[pcmi]) / Z
    tilt = expected_pcmi(p0, T, d)
    np.testing.assert_allclose(q, softmax(np.log(p0) + tilt), atol=1e-12)


def test_demo_independent_teacher_has_zero_tilt():
    # "zero tilt": every row of T is p0, so pcmi(y; y*) = log p0(y) - log p0(y) = 0 for all y, y*;
    # E[pcmi] is then constant (0) and SDSD's optimum is p0 itself (incorrect outputs included).
    T = np.tile(P0, (P0.size, 1))
    np.testing.assert_allclose(expected_pcmi(P0, T, demo_distribution(P0, C)), 0.0, atol=1e-12)
    np.testing.assert_allclose(sdsd_optimum(P0, C, T), P0, atol=1e-12)
    np.testing.assert_allclose(copy_kernel_teacher(P0, 0.0), T, atol=1e-15)
    np.testing.assert_allclose(sdsd_optimum(P0, C, copy_kernel_teacher(P0, 0.0, groups=GROUPS)), P0,
                               atol=1e-12)


@pytest.mark.parametrize("strength", [0.1, 0.5, 0.9])
def test_copying_widens_the_gap_between_top_outputs(strength):
    q = sdsd_optimum(P0, C, copy_kernel_teacher(P0, strength))
    assert q[0] / q[1] > P0[0] / P0[1] * (1 + 1e-6)
    assert max_log_ratio_error(q, P0, C) > 1e-3


@pytest.mark.parametrize("strength", [0.1, 0.5, 0.9])
def test_concept_copying_widens_the_gap_between_top_concepts(strength):
    # copying the demonstration's concept: the likelier concept gains, ratios inside a concept stay
    q = sdsd_optimum(P0, C, copy_kernel_teacher(P0, strength, groups=GROUPS))
    assert (q[0] + q[1]) / (q[2] + q[3]) > (P0[0] + P0[1]) / (P0[2] + P0[3]) * (1 + 1e-6)
    assert q[0] / q[1] == pytest.approx(P0[0] / P0[1], rel=1e-12)
    assert q[2] / q[3] == pytest.approx(P0[2] / P0[3], rel=1e-12)


def test_iterated_sdsd_collapses_while_rl_keeps_ratios():
    traj = sdsd_iterate(P0, C, lambda p: copy_kernel_teacher(p, 0.5), 20)
    assert traj.shape == (21, P0.size)
    np.testing.assert_allclose(traj.sum(1), 1.0)
    top = traj[:, 0]
    assert top[0] == pytest.approx(0.30)
    assert np.all(np.diff(top) > 0)
    assert top.max() > 0.9
    # RL, even iterated on-policy, keeps the base ratios (top share among correct stays 0.30 / 0.85)
    p = P0
    for _ in range(20):
        p = rl_optimum(p, C, 1.0)
        assert max_log_ratio_error(p, P0, C) < 1e-9
    assert p[0] / p[C].sum() == pytest.approx(0.30 / 0.85)


@pytest.mark.parametrize("groups", [None, GROUPS])
@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_copy_kernel_is_bayes_consistent(groups, strength):
    d = demo_distribution(P0, C)
    # exact Bayes consistency w.r.t. its own base
    T = copy_kernel_teacher(P0, strength, groups=groups)
    np.testing.assert_allclose(P0 @ T, P0, atol=1e-14)
    Tc = copy_kernel_teacher(P0, strength, groups=groups, correct=C)
    np.testing.assert_allclose(d @ Tc, d, atol=1e-14)            # E_{y*~p0(.|C)} T[y*] = p0(.|C)
    # the arithmetic mean over correct demonstrations (marginalised teacher, M -> inf) is
    # ratio-preserving on C for both kernels, while the geometric mean (SDSD) is not
    for teacher in (T, Tc):
        assert max_log_ratio_error(d @ teacher, P0, C) < 1e-12
        assert max_log_ratio_error(sdsd_optimum(P0, C, teacher), P0, C) > 1e-2


def test_marginal_teacher_exact_enumeration_matches_brute_force():
    T = copy_kernel_teacher(P0, 0.5)
    d = demo_distribution(P0, C)
    M = 3
    logm = np.zeros(P0.size)
    for tup in itertools.product(np.flatnonzero(d), repeat=M):
        logm += np.prod(d[list(tup)]) * np.log(T[list(tup)].mean(0))
    np.testing.assert_allclose(marginal_teacher(T, d, M), softmax(logm), atol=1e-12)
    # Monte Carlo fallback agrees with the exact value
    q_mc = marginal_teacher(T, d, 4, exact_max_tuples=1, n_mc=50_000, rng=np.random.default_rng(1))
    np.testing.assert_allclose(q_mc, marginal_teacher(T, d, 4), atol=3e-3)


@pytest.mark.parametrize("kernel", ["plain", "correct_only"])
def test_marginal_teacher_bias_decreases_with_M(kernel):
    T = copy_kernel_teacher(P0, 0.5, correct=C if kernel == "correct_only" else None)
    sdsd_err = max_log_ratio_error(sdsd_optimum(P0, C, T), P0, C)
    b1, b4, b8, b16 = marginal_teacher_bias(P0, C, T, [1, 4, 8, 16])
    assert b1 == pytest.approx(sdsd_err, abs=1e-10)             # M = 1 is plain SDSD
    np.testing.assert_allclose(marginal_teacher(T, demo_distribution(P0, C), 1), sdsd_optimum(P0, C, T),
                               atol=1e-12)
    assert b1 > b4 > b8 > b16
    assert b16 < 0.4 * b1


def test_cmi_reweighting_approaches_ratio_preservation():
    T = copy_kernel_teacher(P0, 0.5)
    sdsd_err = max_log_ratio_error(sdsd_optimum(P0, C, T), P0, C)
    # one fixed pool of M demonstrations: error of the per-pool target, E over pools ~ 1/sqrt(M)
    e1, e4, e16 = cmi_reweighting_error(P0, C, T, [1, 4, 16])
    assert e1 > e4 > e16
    assert 0.15 < e16 / e1 < 0.35                               # 1/sqrt(16) = 0.25
    (e64,) = cmi_reweighting_error(P0, C, T, [64], exact_max_tuples=1, rng=np.random.default_rng(0))
    assert e64 < sdsd_err                                       # needs M ~ 64 to beat SDSD here
    # expected target E_draws[q]: error is second order in the residual, ~1/M
    m1, m4, m16 = [max_log_ratio_error(cmi_reweighted_optimum(P0, C, T, M), P0, C) for M in (1, 4, 16)]
    assert m1 > m4 > m16
    assert m16 < sdsd_err
    # fresh demonstrations every update: reverse-KL fixed point = geometric mean of per-draw targets,
    # exactly p0 for any M (the tilt estimate is unbiased in log space)
    logq, w = th._cmi_draws(P0, C, T, 2, 10**6, 0, None)
    assert max_log_ratio_error(softmax(w @ logq), P0, C) < 1e-12
    # brute force over ordered pairs for M = 2
    d = demo_distribution(P0, C)
    tau = expected_pcmi(P0, T, d)
    q_bf = np.zeros(P0.size)
    for a, b in itertools.product(np.flatnonzero(d), repeat=2):
        tau_hat = (expected_pcmi(P0, T, np.eye(P0.size)[a]) + expected_pcmi(P0, T, np.eye(P0.size)[b])) / 2
        q_bf += d[a] * d[b] * softmax(np.log(P0) + tau - tau_hat)
    np.testing.assert_allclose(cmi_reweighted_optimum(P0, C, T, 2), q_bf, atol=1e-12)


def test_input_validation():
    with pytest.raises(ValueError, match="strength must be in"):
        copy_kernel_teacher(P0, 1.5)
    with pytest.raises(ValueError, match="strength must be in"):
        copy_kernel_teacher(P0, -0.1)
    bad = P0 * 0.9
    with pytest.raises(ValueError, match="must sum to 1"):
        rl_optimum(bad, C, 1.0)
    with pytest.raises(ValueError, match="must sum to 1"):
        sdsd_optimum(bad, C, copy_kernel_teacher(P0, 0.5))
    none = np.zeros_like(C)
    with pytest.raises(ValueError, match="no correct output"):
        demo_distribution(P0, none)
    with pytest.raises(ValueError, match="no correct output"):
        sdsd_optimum(P0, none, copy_kernel_teacher(P0, 0.5))
    with pytest.raises(ValueError, match="no correct output"):   # correct outputs with zero mass
        demo_distribution(np.array([0.0, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="boolean"):
        rl_optimum(P0, C.astype(int), 1.0)
    with pytest.raises(ValueError, match="rows? .*sum to 1|must sum to 1"):
        sdsd_optimum(P0, C, np.full((P0.size, P0.size), 0.5))
    with pytest.raises(ValueError, match="M .*>= 1"):
        marginal_teacher(copy_kernel_teacher(P0, 0.5), demo_distribution(P0, C), 0)


def test_theory_report(tmp_path):
    res = th.theory_report(tmp_path / "out")
    # figures are drawn by `analysis/` from the returned curves; the library writes theory.md only
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["theory.md"]  # no temporary file left
    assert (tmp_path / "out" / "theory.md").stat().st_size > 0
    curves = res["curves"]
    n, Ms = len(EXAMPLE_P0), curves["Ms"]
    assert curves["p0"] == EXAMPLE_P0.tolist() and curves["correct"] == EXAMPLE_CORRECT.tolist()
    assert set(curves["tilt_by_strength"]) >= {"0.1", "0.3", "0.8"}
    assert all(len(v) == n for v in curves["tilt_by_strength"].values())
    top = curves["iterated_top_share"]
    assert len(top) == 21 and top[0] == pytest.approx(EXAMPLE_P0[curves["top"]])
    assert top[20] == pytest.approx(res["iterated_top_share_20"]) and curves["rl_top_share"] == res["rl_top_share"]
    assert len(curves["marginal"]) == len(curves["cmi_pool"]) == len(curves["cmi_mean"]) == len(Ms)
    assert curves["marginal"] == [res[f"sdsd_marginal_M{M}"] for M in Ms]
    assert curves["cmi_pool"] == [res[f"sdsd_cmi_M{M}"] for M in Ms]
    assert curves["sdsd_error"] == res["sdsd_max_log_ratio_error"]
    assert res["iterated_top_share_20"] > 0.9 and res["iterations_to_top_share_0.9"] <= 20
    assert res["rl_top_share"] == pytest.approx(0.30 / 0.85, abs=1e-3)
    assert res["rl_max_log_ratio_error"] < 1e-9
    assert res["sdsd_marginal_M1"] == pytest.approx(res["sdsd_max_log_ratio_error"])
    assert res["sdsd_marginal_M16"] < res["sdsd_marginal_M4"] < res["sdsd_marginal_M1"]
    assert res["sdsd_cmi_M16"] < res["sdsd_cmi_M4"] < res["sdsd_cmi_M1"]
    md = (tmp_path / "out" / "theory.md").read_text()
    assert "marginalised teacher" in md and f"{res['sdsd_max_log_ratio_error']:.4f}" in md
    # the objectives as coded, on the tabular example
    rows, base_top = res["objectives"]["rows"], res["objectives"]["base_top_share"]
    assert base_top == pytest.approx(0.3 / 0.815, abs=1e-3)
    for beta in th.TABULAR_BETAS:
        assert rows[f"grpo beta={beta:g}"]["max_log_ratio_error"] < 1e-6
        assert rows[f"sdsd_cmi coef=1 beta={beta:g}"]["max_log_ratio_error"] < 1e-6
        assert rows[f"sdsd beta={beta:g}"]["top_share"] > base_top + 0.3
        assert rows[f"sdsd_anticopy coef=3 beta={beta:g}"]["top_share"] < base_top - 0.05
    assert "as the code implements them" in md and "| sdsd_cmi coef=1 | 0.5 | 0.368 | 0.000 |" in md


# ---------------------------------------------------------------------------------------------
# the objectives as the code implements them (tabular space); against the shipped code:
# tests/unit/test_theory_code.py

TAB = th.TabularSpace(3, 2, [y2 != 2 for y1 in range(3) for y2 in range(3)])
TAB_BASE = np.log([[0.5, 0.3, 0.2], [0.6, 0.25, 0.15], [0.3, 0.5, 0.2], [0.45, 0.3, 0.25]])


def test_tabular_space_indexing_and_probabilities():
    s = th.TabularSpace(2, 3, np.ones(8, dtype=bool))
    assert s.n_prefix == 7 and s.outputs[5].tolist() == [1, 0, 1]
    assert s.prefix_of[5].tolist() == [0, 2, 5]          # (), (1,), (1, 0)
    assert s.depth.tolist() == [0, 1, 1, 2, 2, 2, 2]
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 2))
    pi = s.probs(logits)
    q = softmax(logits, -1)
    assert pi[5] == pytest.approx(q[0, 1] * q[2, 0] * q[5, 1], rel=1e-12)
    assert pi.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(s.visits(pi)[[0, 1, 2, 5]], [1.0, pi[:4].sum(), pi[4:].sum(), pi[4:6].sum()])
    np.testing.assert_allclose(s.probs(s.logits_from_probs(pi)), pi, atol=1e-14)
    with pytest.raises(ValueError, match="K >= 2"):
        th.TabularSpace(1, 2, [True])
    with pytest.raises(ValueError, match="no output is correct"):
        th.TabularSpace(2, 1, [False, False])
    with pytest.raises(ValueError, match="shape"):
        s.probs(np.zeros((3, 2)))


def test_copy_teacher_adds_kappa_on_the_demonstration_token():
    lt = th.copy_teacher_logprobs(TAB, TAB_BASE, 1.5)             # [d, h, v]
    d = 5                                                        # demonstration (1, 2)
    np.testing.assert_allclose(np.exp(lt[d, 0]), softmax(TAB_BASE[0] + 1.5 * np.eye(3)[1]))
    np.testing.assert_allclose(np.exp(lt[d, 3]), softmax(TAB_BASE[3] + 1.5 * np.eye(3)[2]))  # after y1 = 2
    np.testing.assert_allclose(th.copy_teacher_logprobs(TAB, TAB_BASE, 0.0)[d], TAB.conditionals(TAB_BASE))


@pytest.mark.parametrize("G", [2, 3, 8])
@pytest.mark.parametrize("scale_std", [True, False])
def test_grpo_expected_advantage_matches_enumeration(G, scale_std):
    c = 0.37
    out = np.zeros(2)
    for rewards in itertools.product([0, 1], repeat=G):            # every reward vector of a group
        r = np.array(rewards, float)
        p = np.prod(np.where(r[1:] == 1, c, 1 - c))
        std = r.std(ddof=1)
        a = (r[0] - r.mean()) / (std + 1e-6) if scale_std else r[0] - r.mean()
        out[int(r[0])] += p * a
    np.testing.assert_allclose(th.grpo_expected_advantage(c, G, scale_std), out, atol=1e-12)


@pytest.mark.parametrize("k,M", [(1, 1), (1, 3), (2, 2), (3, 2), (2, 3)])
def test_pool_tuple_law_matches_brute_force(k, M):
    u = np.array([0.5, 0.0, 0.3, 0.2])
    sup = np.flatnonzero(u)
    tuples = sup[np.array(list(itertools.product(range(3), repeat=M)))]
    brute = np.zeros(len(tuples))
    for pool in itertools.product(sup, repeat=k):                   # k iid pool members
        for slots in itertools.product(range(k), repeat=M):         # M uniform draws of a slot
            hit = np.all(tuples == np.array(pool)[list(slots)], axis=1)
            brute += hit * np.prod(u[list(pool)]) / k**M
    law = th._pool_tuple_law(u, tuples, k)
    np.testing.assert_allclose(law, brute, atol=1e-14)
    assert law.sum() == pytest.approx(1.0)


def test_expected_gradient_is_zero_at_the_fixed_point_and_the_field_is_a_gradient():
    kw = dict(beta=0.5, G=2, kappa=1.0)
    for name in th.TABULAR_OBJECTIVES:
        fp = th.tabular_fixed_point(name, TAB, TAB_BASE, **kw)
        assert np.abs(th.expected_gradient(name, TAB, fp, TAB_BASE, **kw)).max() < 1e-9
        assert np.abs(th.expected_gradient(name, TAB, TAB_BASE, TAB_BASE, **kw)).max() > 1e-3
    # grpo + anchor is the gradient of -(E_pi[R] - beta KL) with R held fixed: check by finite differences
    rng = np.random.default_rng(1)
    logits = TAB_BASE + 0.3 * rng.standard_normal(TAB_BASE.shape)
    A = th.grpo_expected_advantage(TAB.probs(logits)[TAB.correct].sum(), 2)
    R = A[TAB.correct.astype(int)]
    p0 = TAB.probs(TAB_BASE)

    def f(x):
        p = TAB.probs(x.reshape(logits.shape))
        return -(p @ R) + 0.5 * np.sum(p * np.log(p / p0))

    eps, grad = 1e-6, np.zeros(logits.size)
    for i in range(logits.size):
        e = np.zeros(logits.size)
        e[i] = eps
        grad[i] = (f(logits.ravel() + e) - f(logits.ravel() - e)) / (2 * eps)
    np.testing.assert_allclose(th.expected_gradient("grpo", TAB, logits, TAB_BASE, **kw).ravel(), grad, atol=1e-8)


def test_tabular_fixed_points_grpo_and_corrected_cmi_preserve_ratios_sdsd_tilts():
    p0 = TAB.probs(TAB_BASE)
    for teacher in ("live", "base"):
        kw = dict(beta=0.5, G=4, kappa=1.0, teacher=teacher)
        grpo = TAB.probs(th.tabular_fixed_point("grpo", TAB, TAB_BASE, **kw))
        cmi = TAB.probs(th.tabular_fixed_point("sdsd_cmi", TAB, TAB_BASE, coef=1.0, **kw))
        sdsd = TAB.probs(th.tabular_fixed_point("sdsd", TAB, TAB_BASE, **kw))
        assert max_log_ratio_error(grpo, p0, TAB.correct) < 1e-9
        assert max_log_ratio_error(cmi, p0, TAB.correct) < 1e-9
        assert sdsd[0] / sdsd[TAB.correct].sum() > 1.1 * p0[0] / p0[TAB.correct].sum()
    # grpo's correct mass solves c = p0(C) e^{A1/beta} / (p0(C) e^{A1/beta} + p0(~C) e^{A0/beta})
    c = grpo[TAB.correct].sum()
    a0, a1 = th.grpo_expected_advantage(c, 4)
    pc = p0[TAB.correct].sum()
    assert c == pytest.approx(pc * np.exp(a1 / 0.5) / (pc * np.exp(a1 / 0.5) + (1 - pc) * np.exp(a0 / 0.5)), rel=1e-9)


def test_tabular_sdsd_closed_form_for_the_live_copy_teacher():
    """At sdsd's fixed point with the live copy teacher, log q_h = log p0_h - F(h.) +
    kappa Omega_h P_h / (beta pi(h)) + const (the section comment in mitigate/theory.py)."""
    beta, kappa, G = 0.5, 1.0, 3
    lq = th.tabular_fixed_point("sdsd", TAB, TAB_BASE, beta=beta, G=G, kappa=kappa)
    q, lp0 = np.exp(lq), TAB.conditionals(TAB_BASE)
    pi = TAB.probs(lq)
    visit, C = TAB.visits(pi), TAB.correct
    c = pi[C].sum()
    u = np.where(C, pi, 0) / c
    a = 1 - (1 - c) ** (G - 1)
    W = a * u[:, None] * visit[None] + (1 - c) ** (G - 1) * np.where(C, pi, 0)[:, None] * TAB.passes  # [d, h]
    demo_tok = TAB.outputs[:, TAB.depth]                                  # [d, h]: d_t
    P = np.stack([(W * (demo_tok == v)).sum(0) for v in range(3)], 1) / W.sum(0)[:, None]
    k_h = (q * (lq - lp0)).sum(-1)
    F = np.zeros((TAB.n_prefix, 3))
    F[0] = k_h[1:]                                                        # KL after the first token
    rhs = lp0 - F + kappa * W.sum(0)[:, None] * P / (beta * visit[:, None])
    np.testing.assert_allclose(lq - lq.mean(1, keepdims=True), rhs - rhs.mean(1, keepdims=True), atol=1e-8)


def test_tabular_marginal_with_one_demonstration_is_sdsd_and_bad_input():
    kw = dict(beta=0.5, G=3, kappa=1.0)
    x = TAB_BASE + 0.2
    np.testing.assert_allclose(th.objective_field("sdsd_marginal", TAB, x, TAB_BASE, M=1, **kw),
                               th.objective_field("sdsd", TAB, x, TAB_BASE, **kw), atol=1e-14)
    with pytest.raises(ValueError, match="unknown objective 'sdsd_x'; allowed: grpo"):
        th.objective_field("sdsd_x", TAB, x, TAB_BASE, **kw)
    with pytest.raises(ValueError, match="teacher must be 'live' or 'base'"):
        th.objective_field("sdsd", TAB, x, TAB_BASE, beta=0.5, G=3, teacher="ema")
    with pytest.raises(ValueError, match="G must be >= 2"):
        th.objective_field("sdsd", TAB, x, TAB_BASE, beta=0.5, G=1)
    with pytest.raises(ValueError, match="beta > 0"):
        th.tabular_fixed_point("grpo", TAB, TAB_BASE, beta=0.0, G=2)


@pytest.mark.parametrize("teacher", ["live", "base"])
def test_tabular_sequence_level_sdsd_closed_form(teacher):
    """sdsd_cmi at coef 0 (sequence-level SDSD): on the correct set, (beta + a) log pi =
    beta log p0 + a E_{y*~pi(.|C)} log p_T(y | y*) + const (the sdsd_cmi docstring)."""
    beta, G = 0.5, 3
    lq = th.tabular_fixed_point("sdsd_cmi", TAB, TAB_BASE, beta=beta, G=G, kappa=1.0, coef=0.0, teacher=teacher)
    pi, p0, C = TAB.probs(lq), TAB.probs(TAB_BASE), TAB.correct
    c = pi[C].sum()
    a = 1 - (1 - c) ** (G - 1)
    log_t = TAB.seq_logprobs(th.copy_teacher_logprobs(TAB, lq if teacher == "live" else TAB_BASE, 1.0))  # [d, y]
    u = np.where(C, pi, 0) / c
    lhs = (beta + a) * np.log(pi[C])
    rhs = beta * np.log(p0[C]) + a * (u @ log_t)[C]
    np.testing.assert_allclose(lhs - lhs.mean(), rhs - rhs.mean(), atol=1e-8)
