"""Exact computations on an explicit finite output space: RL vs SDSD optima and the mitigations.

Outputs are the indices 0..n-1 of one prompt. `p0` is the base policy (1-D, sums to 1), `correct`
the verifier (boolean, same shape), and a teacher is a matrix `T[j, y] = p(y | y*=j)`: row j is
the policy conditioned on demonstration j (rows sum to 1). Demonstrations are drawn from the
correct part of the policy, `d(y*) ∝ p(y*) 1[y* correct]` (`demo_distribution`).

    RL (KL leash beta)       p*(y)   ∝ p0(y) exp(r(y)/beta)               ratios on C preserved
    SDSD                     p_SD(y) ∝ p0(y) exp(E_d[pcmi(y; y*)])        pcmi = log T[y*,y] - log p0(y)
                                     = exp(E_d[log T[y*, y]]) / Z          geometric mean of teachers
    marginalised teacher     exp(E[log (1/M) sum_m T[y*_m, y]]) / Z       -> arithmetic mean as M -> inf
    CMI reweighting          p0(y) exp(E_d[pcmi] - (1/M) sum_m pcmi(y; y*_m)) / Z

The second part models the objectives as mitigate/objectives/*.py implement them (token-level
distillation, shared on-policy demonstrations, leave-one-out baselines, GRPO's group normalisation,
the KL anchor's score term) on a tabular autoregressive policy over all K**L token sequences with a
copy-prone teacher: `objective_field` / `expected_gradient` give each objective's exact expected
gradient and `tabular_fixed_point` its fixed point; tests/unit/test_theory_code.py runs the shipped
objectives on the same space and checks both.

Everything is numpy/scipy. Expectations over M-tuples of demonstrations are exact: the targets
depend on a tuple only through its count vector, so we enumerate count vectors with their
multinomial probabilities (C(M+k-1, k-1) of them for k demonstrable outputs) and fall back to
Monte Carlo when there are too many. `theory_report` computes the example's numbers and curves (`analysis/` draws them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import root
from scipy.special import gammaln, logsumexp
from scipy.stats import binom

from mitigate.core.io import write_text

# ---------------------------------------------------------------------------------------------
# validation and small helpers


def _check_dist(p, name: str = "p0") -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {p}")
    if abs(p.sum() - 1.0) > 1e-8:
        raise ValueError(f"{name} must sum to 1, got sum {p.sum():.10g}")
    return p


def _check_correct(correct, n: int) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.shape != (n,) or correct.dtype != bool:
        raise ValueError(f"correct must be a boolean array of shape ({n},), got {correct.dtype} "
                         f"array of shape {correct.shape}")
    return correct


def _check_teacher(T, n: int) -> np.ndarray:
    T = np.asarray(T, dtype=float)
    if T.shape != (n, n):
        raise ValueError(f"teacher T must have shape ({n}, {n}), got {T.shape}")
    if not np.all(np.isfinite(T)) or np.any(T < 0):
        raise ValueError("teacher T must be finite and non-negative")
    if np.max(np.abs(T.sum(1) - 1.0)) > 1e-8:
        raise ValueError("every teacher row T[j] must sum to 1")
    return T


def _normalise_log(logw: np.ndarray) -> np.ndarray:
    """exp(logw) / Z along the last axis, stable; -inf entries get probability 0."""
    logz = logsumexp(logw, axis=-1, keepdims=True)
    if not np.all(np.isfinite(logz)):
        raise ValueError("target has no support: every output has zero weight (e.g. teachers for "
                         "different demonstrations share no output, so their geometric mean is 0)")
    return np.exp(logw - logz)


def _log(x) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x)


# ---------------------------------------------------------------------------------------------
# teachers, demonstrations, optima


def copy_kernel_teacher(p, strength: float, groups=None, correct=None) -> np.ndarray:
    """A Bayes-style copying teacher: T[j] = strength * copy(j) + (1 - strength) * base.

    base = p, or p(.|C) if `correct` is given. copy(j) is onehot(j) without `groups`; with
    `groups` (a concept label per output) it copies the demonstration's concept:
    copy(j)(y) = 1[g(y) = g(j)] base(y) / base(g(j)).

    Bayes consistency: E_{y*~base} T[y*, .] = base exactly (the copy kernel is a reversible
    resampling of base). So with `correct` given, E_{y*~p(.|C)} T[y*, .] = p(.|C); without it,
    E_{y*~p(.|C)} T[y*, y] = strength p(y|C) + (1 - strength) p(y) (no groups), which is still
    proportional to p on C (ratio-preserving) but leaks mass to incorrect outputs, as a real
    teacher does. (With groups and no `correct`, ratio preservation on C needs every concept to
    be all-correct or all-incorrect.) Rows whose concept has no base mass fall back to base.
    """
    p = _check_dist(p, "p")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"copy strength must be in [0, 1], got {strength}")
    n = p.size
    base = p
    if correct is not None:
        correct = _check_correct(correct, n)
        if p[correct].sum() <= 0:
            raise ValueError("copy_kernel_teacher: p puts no mass on correct outputs")
        base = np.where(correct, p, 0.0) / p[correct].sum()
    g = np.arange(n) if groups is None else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    same = g[:, None] == g[None, :]                       # [j, y]: y in the concept of j
    mass = same @ base                                    # base(g(j))
    copy = np.where(same, base[None, :], 0.0)
    copy = np.where(mass[:, None] > 0, copy / np.where(mass > 0, mass, 1.0)[:, None], base[None, :])
    return strength * copy + (1.0 - strength) * base[None, :]


def rl_optimum(p0, correct, beta: float) -> np.ndarray:
    """Optimum of E_q[r] - beta KL(q || p0): p0(y) exp(r(y)/beta) / Z, r = 1[correct]."""
    p0 = _check_dist(p0)
    correct = _check_correct(correct, p0.size)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return _normalise_log(_log(p0) + correct / beta)


def demo_distribution(p, correct) -> np.ndarray:
    """Demonstrations are correct samples of p: d(y*) = p(y*) 1[y* correct] / p(C)."""
    p = _check_dist(p, "p")
    correct = _check_correct(correct, p.size)
    mass = p[correct].sum()
    if mass <= 0:
        raise ValueError("no correct output has positive probability, so there is no demonstration "
                         "to sample (correct mass is 0)")
    return np.where(correct, p, 0.0) / mass


def _mean_log_teacher(T: np.ndarray, demo_dist: np.ndarray) -> np.ndarray:
    """E_{y*~d}[log T[y*, y]] over the support of d (0 * -inf terms never appear)."""
    s = demo_dist > 0
    return _sum_with_inf(demo_dist[s], _log(T[s]))


def _sum_with_inf(w: np.ndarray, L: np.ndarray) -> np.ndarray:
    """w @ L where L may hold -inf (w > 0): -inf if any term is -inf."""
    finite = np.isfinite(L).all(0)
    out = w @ np.where(np.isfinite(L), L, 0.0)
    return np.where(finite, out, -np.inf)


def expected_pcmi(p, T, demo_dist) -> np.ndarray:
    """The SDSD tilt: tau(y) = E_{y*~d}[pcmi(y; y*)] = E_{y*~d}[log T[y*, y]] - log p(y).

    -inf where some demonstration's teacher gives y zero probability; nan where p(y) = 0.
    """
    p = _check_dist(p, "p")
    T = _check_teacher(T, p.size)
    d = _check_dist(demo_dist, "demo_dist")
    with np.errstate(invalid="ignore"):
        return _mean_log_teacher(T, d) - _log(p)


def sdsd_optimum(p0, correct, T) -> np.ndarray:
    """SDSD's optimum: argmin over the simplex of E_{y*~d} KL(q || T[y*]), d = demo_distribution(p0).

    E_{y*} KL(q || T[y*]) = sum_y q(y) (log q(y) - E_{y*} log T[y*, y]) = KL(q || G) - log Z with
    G = exp(E_{y*} log T[y*, .]) / Z, so the minimiser is the normalised geometric mean of the
    teachers, G = p0 exp(E_{y*}[pcmi(y; y*)]) / Z.
    """
    p0 = _check_dist(p0)
    d = demo_distribution(p0, correct)
    T = _check_teacher(T, p0.size)
    return _normalise_log(_mean_log_teacher(T, d))


def sdsd_iterate(p0, correct, teacher_fn: Callable[[np.ndarray], np.ndarray], n_iter: int) -> np.ndarray:
    """On-policy SDSD: p_{t+1} = sdsd_optimum(p_t, correct, teacher_fn(p_t)).

    Both the demonstrations (correct samples of p_t) and the teacher (p_t conditioned on them)
    follow the current policy, so a tilt towards likely demonstrations compounds.
    Returns the trajectory, shape [n_iter + 1, n], row 0 = p0.
    """
    p = _check_dist(p0)
    traj = [p]
    for _ in range(n_iter):
        p = sdsd_optimum(p, correct, teacher_fn(p))
        traj.append(p)
    return np.stack(traj)


def max_log_ratio_error(p, p0, correct) -> float:
    """max over correct y, y' of |log p(y)/p(y') - log p0(y)/p0(y')|
    = max - min over correct y of log(p(y) / p0(y)) (outputs with p0(y) = 0 are skipped).
    0 iff p preserves p0's ratios among correct outputs; inf if p drops a correct output."""
    p, p0 = np.asarray(p, dtype=float), np.asarray(p0, dtype=float)
    c = _check_correct(correct, p0.size) & (p0 > 0)
    if not c.any():
        raise ValueError("max_log_ratio_error: no correct output has positive p0")
    with np.errstate(divide="ignore"):
        r = np.log(p[c]) - np.log(p0[c])
    if not np.all(np.isfinite(r)):
        return math.inf
    return float(r.max() - r.min())


# ---------------------------------------------------------------------------------------------
# expectations over M iid demonstrations (count vectors)


def _compositions(M: int, k: int) -> np.ndarray:
    """All count vectors of k non-negative integers summing to M, shape [C(M+k-1, k-1), k].

    Stars and bars: the k - 1 bar positions among M + k - 1 slots <-> one count vector.
    """
    bars = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(M + k - 1), k - 1)),
                       dtype=np.int64).reshape(math.comb(M + k - 1, k - 1), k - 1)
    ends = np.ones((len(bars), 1), dtype=np.int64)
    return np.diff(np.concatenate([-ends, bars, (M + k - 1) * ends], 1), axis=1) - 1


def _demo_counts(demo_dist, M: int, exact_max_tuples: int, n_mc: int, rng):
    """Count vectors of M iid demonstrations and their probabilities.

    Returns (support [k], counts [K, k], weights [K]). Exact (all compositions of M into k parts,
    multinomial weights) when there are at most `exact_max_tuples` of them, else n_mc Monte
    Carlo draws with equal weights.
    """
    if not (isinstance(M, (int, np.integer)) and M >= 1):
        raise ValueError(f"M (demonstrations per tuple) must be an integer >= 1, got {M!r}")
    d = _check_dist(demo_dist, "demo_dist")
    support = np.flatnonzero(d > 0)
    ds, k = d[support], support.size
    n_exact = math.comb(M + k - 1, k - 1)
    if n_exact <= exact_max_tuples:
        counts = _compositions(M, k)
        logw = gammaln(M + 1) - gammaln(counts + 1).sum(1) + counts @ np.log(ds)
        weights = np.exp(logw)
    else:
        rng = np.random.default_rng(0) if rng is None else rng
        counts = rng.multinomial(M, ds, size=n_mc)
        weights = np.full(n_mc, 1.0 / n_mc)
    keep = weights > 0
    return support, counts[keep], weights[keep] / weights[keep].sum()


def marginal_teacher(T, demo_dist, M: int, exact_max_tuples: int = 200_000, n_mc: int = 20_000,
                     rng=None) -> np.ndarray:
    """SDSD's fixed point when the teacher is an arithmetic mixture over M demonstrations.

    Teacher for a tuple (y*_1..y*_M) iid ~ d: m(y) = (1/M) sum_m T[y*_m, y]. Averaging the reverse
    KL over tuples again gives a geometric mean, now of mixtures:
        q_M(y) = exp(E_tuples[log m(y)]) / Z.
    M = 1 is plain SDSD. As M -> inf, m -> E_{y*~d} T[y*, .] (law of large numbers), which for a
    Bayes-consistent teacher is p0(.|C) (ratio-preserving); the remaining bias is the Jensen gap
    E[log m] - log E[m] ~ -Var(T[y*, y]) / (2 M E[T[y*, y]]^2), i.e. O(1/M).
    Exact over count vectors when their number is <= exact_max_tuples, else n_mc Monte Carlo draws.
    """
    d = _check_dist(demo_dist, "demo_dist")
    T = _check_teacher(T, d.size)
    support, counts, w = _demo_counts(d, M, exact_max_tuples, n_mc, rng)
    mix = counts @ T[support] / M                         # [K, n] mixture teacher per tuple
    return _normalise_log(_sum_with_inf(w, _log(mix)))


def marginal_teacher_bias(p0, correct, T, Ms: Sequence[int], **kw) -> np.ndarray:
    """max_log_ratio_error of marginal_teacher(T, d, M) vs p0 among correct outputs, for each M."""
    d = demo_distribution(p0, correct)
    return np.array([max_log_ratio_error(marginal_teacher(T, d, M, **kw), p0, correct) for M in Ms])


def _cmi_draws(p0, correct, T, M, exact_max_tuples, n_mc, rng):
    """Per-draw CMI-reweighted log-targets (unnormalised) [K, n] and their probabilities [K].

    For a draw of M demonstrations with empirical distribution c/M, the residual tilt is
    tau(y) - tau_hat_M(y) = sum_j (d_j - c_j/M) log T[j, y]; the target is p0 exp(residual) / Z.
    Outputs that some demonstration's teacher never produces keep probability 0 (as in SDSD).
    """
    p0 = _check_dist(p0)
    T = _check_teacher(T, p0.size)
    d = demo_distribution(p0, correct)
    support, counts, w = _demo_counts(d, M, exact_max_tuples, n_mc, rng)
    L = _log(T[support])                                  # [k, n]
    finite = np.isfinite(L).all(0)
    resid = (d[support][None, :] - counts / M) @ np.where(np.isfinite(L), L, 0.0)
    return np.where(finite[None, :], _log(p0)[None, :] + resid, -np.inf), w


def cmi_reweighted_optimum(p0, correct, T, M: int, exact_max_tuples: int = 200_000, n_mc: int = 20_000,
                           rng=None) -> np.ndarray:
    """Expected target of SDSD with CMI reweighting, the tilt estimated from M demonstrations.

    SDSD's optimum tilts p0 by tau(y) = E_{y*}[pcmi(y; y*)]. The mitigation subtracts an estimate
    tau_hat_M(y) = (1/M) sum_m pcmi(y; y*_m) from M iid demonstrations, giving the per-draw target
        q(y) = p0(y) exp(tau(y) - tau_hat_M(y)) / Z.
    The residual tau - tau_hat_M has mean 0 and variance O(1/M). Returned: the arithmetic mean
    E_draws[q] (exact over count vectors, Monte Carlo beyond exact_max_tuples); its log-ratio
    error is second order in the residual, O(1/M).

    What M does and does not buy (be honest about the estimator): tau_hat_M is unbiased in log
    space, so the reverse-KL fixed point with fresh demonstrations at every update (the normalised
    geometric mean of the per-draw targets) is exactly p0 for every M. The M-dependence matters
    when one fixed set of M demonstrations per prompt sets the target: `cmi_reweighting_error`
    reports the expected max log-ratio error of that per-draw target, which shrinks like 1/sqrt(M).
    """
    logq, w = _cmi_draws(p0, correct, T, M, exact_max_tuples, n_mc, rng)
    return w @ _normalise_log(logq)


def cmi_reweighting_error(p0, correct, T, Ms: Sequence[int], exact_max_tuples: int = 200_000,
                          n_mc: int = 20_000, rng=None) -> np.ndarray:
    """E over draws of M demonstrations of max_log_ratio_error(per-draw CMI target, p0), per M.

    Per draw the error is max - min over correct y of tau(y) - tau_hat_M(y), of order sd/sqrt(M).
    """
    p0 = _check_dist(p0)
    c = _check_correct(correct, p0.size) & (p0 > 0)
    out = []
    for M in Ms:
        logq, w = _cmi_draws(p0, correct, T, M, exact_max_tuples, n_mc, rng)
        with np.errstate(invalid="ignore"):
            r = logq[:, c] - np.log(p0[c])[None, :]
        err = np.where(np.isfinite(r).all(1), r.max(1) - r.min(1), np.inf)
        out.append(float(w @ err))
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# the objectives as the code implements them: a tabular autoregressive policy
#
# The flat functions above model one idealised objective each. The functions below model what
# mitigate/objectives/*.py compute, term by term, on a space small enough to enumerate: outputs
# are all K**L token sequences of length L, the policy is one softmax per prefix (logits
# [n_prefix, K]; any full-support distribution over outputs is reachable), a group is G iid
# rollouts, demonstrations are drawn as `ops.pick_demonstrations` draws them (uniformly, with
# replacement, from the correct rollouts of the group other than the rollout itself; the rollout
# itself when it is the group's only correct one), and the teacher is copy-prone:
#
#     T(v | y*, h) = softmax(theta_T(h) + kappa 1[v = y*_t])        (h a prefix of length t)
#
# with theta_T the student's own logits (teacher "live"; also the fixed point of an "ema" teacher,
# which equals the student once it stops moving) or the base logits (teacher "base").
#
# For each objective, `objective_field` returns X [n_prefix, K] such that the exact expected
# gradient of the code's loss per rollout (aggregation seq_sum, one prompt per step) plus the
# shared anchor beta * KL(pi || p0) (`ops.reverse_kl_anchor`), with respect to the logits of
# prefix h, is  q_h * (X_h - E_{q_h} X_h). A fixed point is where every X_h is constant in v.
# Writing pi(h) for the probability that a rollout passes through h, the terms of X_h(v) are
#
#   anchor            beta pi(h) [log q_h(v) - log p0_h(v) + F(hv)],   F(hv) = expected KL still
#                     to come after hv (the score term of the anchor; without it the fixed point
#                     is not the RL optimum)
#   token-level       sum_d W_h(d) [log q_h(v) - log T(v | d, h)]   (sdsd; sdsd_marginal with the
#   distillation      M-mixture teacher in place of T; W_h(d) = probability that a rollout passes
#                     through h and is distilled toward demonstration (tuple) d)
#   score term        - pi(h) E[R(y) | y passes through hv]   for a per-rollout reward R
#                     (grpo: E[advantage | r(y)]; sdsd_cmi: E[advantage | y]; sdsd_anticopy:
#                     -coef E[centred pcmi | y])
#
# What the fixed points say (checked in tests/unit/test_theory.py and, against the shipped code,
# tests/unit/test_theory_code.py):
#   grpo, sdsd_cmi     pi(y) = p0(y) exp(R(y) / beta) / Z with R the expected advantage: R depends
#                      on y only through r(y) for grpo, and is 0 on the correct set for sdsd_cmi at
#                      coef = 1, so both keep p0's ratios among correct outputs exactly.
#   sdsd               q_h ∝ exp([Omega_h G_h + beta pi(h) (log p0_h - F(h.))] / (Omega_h + beta pi(h))),
#                      Omega_h = sum_d W_h(d), G_h = sum_d W_h(d) log T(. | d, h) / Omega_h: a
#                      per-prefix geometric mean of the teachers of the on-policy demonstrations
#                      (self-demonstrations included), pulled toward the base by the anchor. For the
#                      live copy teacher: q_h ∝ p0_h exp(-F(h.) + kappa Omega_h P_h(.) / (beta pi(h)))
#                      with P_h(v) the W_h-share of demonstrations whose token at this position is v:
#                      the tilt toward what demonstrations say, strongest for the likeliest.
#   sdsd_marginal      the same with the prefix-weighted M-mixture in place of T: a geometric mean
#                      of mixtures. The copy teacher is not Bayes-consistent, so the mixture does
#                      not average the tilt away (most of it stays).
#   sdsd_anticopy      sdsd's field plus a reward -coef a E[pcmi(y; y*)] on correct outputs: for
#                      coef > 1 a flattening that favours what demonstrations make less likely.

TABULAR_OBJECTIVES = ("grpo", "grpo_negative", "grpo_passk", "sdsd", "sdsd_marginal", "sdsd_cmi", "sdsd_anticopy",
                      "sdsd_interp")
RL_OBJECTIVES = ("grpo", "grpo_negative", "grpo_passk")  # an advantage per correctness class: no teacher
TABULAR_DEMO_RULES = ("uniform", "first", "distinct", "least_likely")  # mitigate.objectives.demos, one prompt


class TabularSpace:
    """All K**L sequences of L tokens from a vocabulary of K (no end token: every output has L
    tokens), a correct set, and the prefix tree of an autoregressive tabular policy.

    Output index = the sequence read as a base-K number (lexicographic). Prefix index: the
    prefixes of length t (0 <= t < L) in lexicographic order after all shorter ones, so the empty
    prefix is 0 and logits have shape [n_prefix, K], n_prefix = (K**L - 1) / (K - 1).
    """

    def __init__(self, K: int, L: int, correct):
        if K < 2 or L < 1:
            raise ValueError(f"TabularSpace needs K >= 2 tokens and L >= 1 positions, got K={K}, L={L}")
        self.K, self.L, self.n = K, L, K**L
        self.correct = _check_correct(correct, self.n)
        if not self.correct.any():
            raise ValueError("TabularSpace: no output is correct")
        self.outputs = np.array(list(itertools.product(range(K), repeat=L)), dtype=np.int64).reshape(self.n, L)
        self.offset = np.array([(K**t - 1) // (K - 1) for t in range(L + 1)])
        self.n_prefix = int(self.offset[L])
        # prefix_of[y, t]: index of y_<t
        value = np.zeros(self.n, dtype=np.int64)
        cols = []
        for t in range(L):
            cols.append(self.offset[t] + value)
            value = value * K + self.outputs[:, t]
        self.prefix_of = np.stack(cols, 1)
        self.depth = np.repeat(np.arange(L), K ** np.arange(L))               # [n_prefix]
        # passes[y, h]: output y passes through prefix h
        self.passes = np.zeros((self.n, self.n_prefix), dtype=bool)
        for t in range(L):
            self.passes[np.arange(self.n), self.prefix_of[:, t]] = True
        # parent/last token of every non-empty prefix, for prefix log-likelihoods
        self.parent = np.full(self.n_prefix, -1)
        self.last = np.full(self.n_prefix, -1)
        for t in range(1, L):
            for y in range(self.n):
                self.parent[self.prefix_of[y, t]] = self.prefix_of[y, t - 1]
                self.last[self.prefix_of[y, t]] = self.outputs[y, t - 1]

    def check_logits(self, logits, name: str = "logits") -> np.ndarray:
        logits = np.asarray(logits, dtype=float)
        if logits.shape != (self.n_prefix, self.K) or not np.all(np.isfinite(logits)):
            raise ValueError(f"{name} must be finite with shape ({self.n_prefix}, {self.K}), got {logits.shape}")
        return logits

    def conditionals(self, logits) -> np.ndarray:
        """log q_h(v): [n_prefix, K]."""
        logits = self.check_logits(logits)
        return logits - logsumexp(logits, axis=-1, keepdims=True)

    def seq_logprobs(self, log_cond: np.ndarray) -> np.ndarray:
        """log pi(y) = sum_t log q(y_t | y_<t) for [..., n_prefix, K] conditionals -> [..., n]."""
        return log_cond[..., self.prefix_of, self.outputs].sum(-1)

    def probs(self, logits) -> np.ndarray:
        """pi(y) over the n outputs."""
        return np.exp(self.seq_logprobs(self.conditionals(logits)))

    def visits(self, pi: np.ndarray) -> np.ndarray:
        """pi(h) = probability that a rollout passes through prefix h: [n_prefix]."""
        return pi @ self.passes

    def per_prefix_sum(self, pi: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """N[h, v] = sum_y pi(y) sum_t 1[y_<t = h, y_t = v] Z[y, t] for Z [n, L] (or [n])."""
        Z = np.broadcast_to(np.asarray(Z, dtype=float).reshape(self.n, -1), (self.n, self.L))
        out = np.zeros((self.n_prefix, self.K))
        np.add.at(out, (self.prefix_of, self.outputs), pi[:, None] * Z)
        return out

    def logits_from_probs(self, p) -> np.ndarray:
        """Logits (log conditionals) of the autoregressive factorisation of a full-support p [n]."""
        p = _check_dist(p, "p")
        if np.any(p <= 0):
            raise ValueError("logits_from_probs needs a full-support distribution")
        mass = np.zeros((self.n_prefix, self.K))
        for t in range(self.L):
            np.add.at(mass, (self.prefix_of[:, t], self.outputs[:, t]), p)
        return np.log(mass / mass.sum(-1, keepdims=True))


def copy_teacher_logprobs(space: TabularSpace, teacher_logits, kappa: float) -> np.ndarray:
    """log T(v | y*=d, h) = log softmax(teacher_logits[h] + kappa 1[v = d_t]) for every
    demonstration d (all n outputs) and prefix h of length t: [n, n_prefix, K]."""
    teacher_logits = space.check_logits(teacher_logits, "teacher_logits")
    copy = space.outputs[:, space.depth]                                      # [n, n_prefix]: d_t
    logits = teacher_logits[None] + kappa * (copy[..., None] == np.arange(space.K))
    return logits - logsumexp(logits, axis=-1, keepdims=True)


def _prefix_loglik(space: TabularSpace, log_t: np.ndarray) -> np.ndarray:
    """[..., n_prefix]: log-likelihood of each prefix h under teachers log_t [..., n_prefix, K]."""
    out = np.zeros(log_t.shape[:-1])
    for h in range(1, space.n_prefix):                                        # parents come first
        out[..., h] = out[..., space.parent[h]] + log_t[..., space.parent[h], space.last[h]]
    return out


def grpo_expected_advantage(c: float, G: int, scale_std: bool = True, eps: float = 1e-6) -> np.ndarray:
    """E[A_i | r_i] for r_i = 0, 1 (ops.group_advantages: (r - mean) / (std + eps), std with
    G - 1 in the denominator) when the other G - 1 rewards are iid Bernoulli(c)."""
    if G < 2:
        raise ValueError(f"group size G must be >= 2, got {G}")
    out = np.zeros(2)
    for r in (0, 1):
        for k in range(G):
            x = np.array([r] + [1] * k + [0] * (G - 1 - k), dtype=float)
            centred = x[0] - x.mean()
            std = np.sqrt(((x - x.mean()) ** 2).sum() / (G - 1))
            out[r] += binom.pmf(k, G - 1, c) * (centred / (std + eps) if scale_std else centred)
    return out


def passk_expected_advantage(c: float, G: int, k: int, scale_std: bool = True) -> np.ndarray:
    """E[A_i | r_i] for r_i = 0, 1 of grpo_passk (objectives/grpo_passk.py's closed form, population
    std of the k-subset rewards) when the other G - 1 rewards are iid Bernoulli(c)."""
    if not 1 <= k <= G:
        raise ValueError(f"k must be between 1 and the group size {G}, got {k}")
    out = np.zeros(2)
    for j in range(G):  # correct others
        for r in (0, 1):
            n_correct = j + r
            r_bar = 1 - math.comb(G - n_correct, k) / math.comb(G, k)
            sigma = np.sqrt(r_bar * (1 - r_bar))
            if sigma < 1e-12:
                continue
            a = (1 - r_bar) if r else (1 - r_bar - math.comb(G - n_correct - 1, k - 1) / math.comb(G - 1, k - 1))
            out[r] += binom.pmf(j, G - 1, c) * (a / sigma if scale_std else a)
    return out


def rl_expected_advantage(objective: str, c: float, G: int, scale_std: bool = True, eps: float = 1e-6,
                          k: int = 1) -> np.ndarray:
    """E[A | r] for r = 0, 1 of the RL rows: grpo, grpo_negative (grpo's with 0 for r = 1) and grpo_passk.
    Constant on the correct set, so each fixed point keeps the base's ratios among correct outputs."""
    if objective == "grpo_passk":
        return passk_expected_advantage(c, G, k, scale_std)
    A = grpo_expected_advantage(c, G, scale_std, eps)
    if objective == "grpo_negative":
        A[1] = 0.0
    return A


def _set_partitions(items: list):
    """All partitions of `items` into non-empty blocks (Bell(len(items)) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first], *part]
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]


def _pool_tuple_law(u: np.ndarray, tuples: np.ndarray, k: int) -> np.ndarray:
    """Probability of each ordered M-tuple of outputs (rows of `tuples` [n_tuples, M]) when M
    demonstrations are drawn uniformly with replacement from a pool of k iid draws of u (the
    correct rollouts of a group other than the rollout itself).

    The M draws pick pool slots; a set partition of the draws into blocks of equal slots has
    probability k (k-1) ... (k-|blocks|+1) / k**M, and given it the tuple is constant on each block
    with an independent u-draw per block."""
    M = tuples.shape[1]
    out = np.zeros(len(tuples))
    for part in _set_partitions(list(range(M))):
        b = len(part)
        if b > k:
            continue
        weight = math.perm(k, b) / k**M
        consistent = np.all([np.all(tuples[:, blk] == tuples[:, blk[:1]], axis=1) for blk in part], axis=0)
        out += weight * consistent * np.prod([u[tuples[:, blk[0]]] for blk in part], axis=0)
    return out


def objective_field(objective: str, space: TabularSpace, logits, base_logits, *, beta: float, G: int,
                    kappa: float = 0.0, teacher: str = "live", M: int = 1, coef: float = 1.0,
                    scale_std: bool = True, eps: float = 1e-6, lam: float = 0.0,
                    demo_rule: str = "uniform", k: int = 1) -> np.ndarray:
    """X [n_prefix, K]: the exact expected gradient of the shipped objective `objective` plus the
    anchor beta KL(pi || p0), per rollout, with respect to the logits of prefix h, is
    q_h * (X_h - E_{q_h} X_h) (see the section comment). Settings as in the objectives' configs:
    G rollouts per group, M demonstrations (sdsd_marginal, sdsd_cmi, sdsd_anticopy; sdsd uses 1),
    coef (sdsd_cmi, sdsd_anticopy), scale_std and eps (grpo); the divergence is reverse KL over
    the full vocabulary; the copy teacher has strength kappa and weights `teacher`.

    Demonstration law per rollout y: with c = pi(C), u = pi(. | C) and k ~ Binomial(G - 1, c)
    correct other rollouts, each demonstration is a correct other (so ~ u) when k >= 1; y itself
    when k = 0 and y is correct; none (masked) otherwise. M demonstrations share the pool of k.

    sdsd_cmi (mitigate/objectives/sdsd_cmi.py), with s(z, d) = log p_T(z | d) - log pi(z),
    S(y) = E_{d~u} s(y, d), S_bar = E_{y~u} S(y), S_self = E_{y~u} s(y, y), a = P(k >= 1):

        R(y) = sum_{k>=1} P(k) [S(y) - (S_self if k = 1 else S_bar)]                  y incorrect
        R(y) = (1 - coef) [a S(y) - S_bar sum_{k>=2} P(k) (1 - k**(-k M))]           y correct

    (a correct rollout's baseline, the other correct rollouts' pcmi against demonstrations other
    than itself, exists unless all k M of their draws picked it). At coef = 1, R = 0 on C.
    sdsd_anticopy: the sdsd field plus the reward -coef [a S(y) - ...] on correct outputs (the
    bracket above). M enters these two only through that constant (both are linear in the
    demonstrations); it enters sdsd_marginal, whose teacher is the prefix-weighted M-mixture.

    sdsd_interp: the sdsd field with each teacher replaced by softmax((1 - lam) log T(. | y*, h) +
    lam log p0(. | h)) (the base without a demonstration). `demo_rule` (sdsd and sdsd_interp) sets
    the law D of the demonstration on the event k >= 1 (`_demo_law`): uniform and first D = u;
    distinct and least_likely from every ordered k-tuple of correct others; a group's sole correct
    rollout demonstrates itself except under `first`, where it is masked.
    """
    if objective not in TABULAR_OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}'; allowed: {', '.join(TABULAR_OBJECTIVES)}")
    if teacher not in ("live", "base"):
        raise ValueError(f"teacher must be 'live' or 'base' (an ema teacher's fixed point is live's), got {teacher!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not (isinstance(M, (int, np.integer)) and M >= 1):
        raise ValueError(f"M must be an integer >= 1, got {M!r}")
    if G < 2:
        raise ValueError(f"group size G must be >= 2, got {G}")
    if demo_rule not in TABULAR_DEMO_RULES:
        raise ValueError(f"demo_rule must be one of {', '.join(TABULAR_DEMO_RULES)}, got {demo_rule!r}")
    if demo_rule != "uniform" and objective not in ("sdsd", "sdsd_interp"):
        raise ValueError(f"demo_rule {demo_rule!r} is modelled for sdsd and sdsd_interp only")
    lq = space.conditionals(logits)
    lp0 = space.conditionals(base_logits)
    q = np.exp(lq)
    log_pi = space.seq_logprobs(lq)
    pi = np.exp(log_pi)
    visit = space.visits(pi)
    C = space.correct
    c = float(pi[C].sum())
    u = np.where(C, pi, 0.0) / c
    pk = binom.pmf(np.arange(G), G - 1, c)                                    # P(k correct others)
    X = np.zeros((space.n_prefix, space.K))

    def score(R):                                                             # - pi(h) E[R | hv]
        return -space.per_prefix_sum(pi, R) / q

    # the anchor: exact KL per prefix plus the KL still to come (ops.reverse_kl_anchor)
    k_h = (q * (lq - lp0)).sum(-1)
    k_yt = k_h[space.prefix_of]                                               # [n, L]
    future = k_yt[:, ::-1].cumsum(1)[:, ::-1] - k_yt
    X += beta * (visit[:, None] * (lq - lp0) - score(future))

    if objective in RL_OBJECTIVES:
        A = rl_expected_advantage(objective, c, G, scale_std, eps, k)
        return X + score(A[C.astype(int)])

    log_t = copy_teacher_logprobs(space, logits if teacher == "live" else base_logits, kappa)  # [d, h, v]
    a = 1.0 - pk[0]                                                           # P(k >= 1)
    if objective in ("sdsd", "sdsd_anticopy", "sdsd_marginal", "sdsd_interp"):
        if objective == "sdsd_marginal" and M > 1:
            sup = np.flatnonzero(C)
            tuples = sup[np.array(list(itertools.product(range(len(sup)), repeat=M)))]   # [n_tup, M]
            law = sum(pk[k] * _pool_tuple_law(u, tuples, k) for k in range(1, G))
            pl = _prefix_loglik(space, log_t)                                          # [d, h]
            w = pl[tuples] - logsumexp(pl[tuples], axis=1, keepdims=True)             # [n_tup, M, h]
            log_mix = logsumexp(w[..., None] + log_t[tuples], axis=1)                 # [n_tup, h, v]
            same = (tuples == tuples[:, :1]).all(1)
            own = np.zeros((len(tuples), space.n_prefix))                             # self-demonstration
            own[same] = pi[tuples[same, 0], None] * space.passes[tuples[same, 0]]
            W = law[:, None] * visit[None, :] + pk[0] * own                           # [n_tup, h]
        else:
            log_mix = log_t
            if objective == "sdsd_interp":
                log_mix = (1.0 - lam) * log_t + lam * lp0[None]
                log_mix = log_mix - logsumexp(log_mix, axis=-1, keepdims=True)
            own = 0.0 if demo_rule == "first" else pk[0] * (np.where(C, pi, 0.0)[:, None] * space.passes)
            W = _demo_law(demo_rule, u, pi, pk, C)[:, None] * visit[None, :] + own
        X += W.sum(0)[:, None] * lq - np.einsum("dh,dhv->hv", W, log_mix)
        if objective != "sdsd_anticopy":
            return X

    # sequence-level pcmi statistics
    s = space.seq_logprobs(log_t) - log_pi[None, :]                          # s[d, z] = pcmi(z; d)
    S = u @ s                                                                 # S(y) = E_{d~u} s(y, d)
    S_bar, S_self = float(u @ S), float(u @ np.diag(s))
    k = np.arange(2, G)
    centred = a * S - S_bar * (pk[2:] * (1.0 - k.astype(float) ** (-k * M))).sum()  # E[centred | y], y correct
    if objective == "sdsd_anticopy":
        return X + score(np.where(C, -coef * centred, 0.0))
    wrong = a * S - pk[1] * S_self - (a - pk[1]) * S_bar
    return X + score(np.where(C, (1.0 - coef) * centred, wrong))


def _demo_law(rule: str, u: np.ndarray, pi: np.ndarray, pk: np.ndarray, C: np.ndarray) -> np.ndarray:
    """D[d]: the probability that a rollout's demonstration is output d and was drawn from k >= 1
    correct other rollouts (iid from u = pi(. | C), k ~ pk), under `rule`: uniform and first give
    a u (by exchangeability the first correct other is a draw from u); distinct draws uniformly
    from the set of distinct outputs of the k-tuple; least_likely takes the tuple's output of
    lowest pi (ties: the first in row order). Exact: every ordered k-tuple of correct outputs."""
    if rule in ("uniform", "first"):
        return (1.0 - pk[0]) * u
    sup = np.flatnonzero(C)
    out = np.zeros(len(u))
    for k in range(1, len(pk)):
        for tup in itertools.product(sup, repeat=k):
            w = pk[k] * np.prod(u[list(tup)])
            if rule == "distinct":
                outs = sorted(set(tup))
                out[outs] += w / len(outs)
            else:
                out[tup[int(np.argmin(pi[list(tup)]))]] += w
    return out


def expected_gradient(objective: str, space: TabularSpace, logits, base_logits, **kw) -> np.ndarray:
    """The exact expected gradient per rollout (objective + anchor) w.r.t. the logits [n_prefix, K]."""
    X = objective_field(objective, space, logits, base_logits, **kw)
    q = np.exp(space.conditionals(logits))
    return q * (X - (q * X).sum(-1, keepdims=True))


def tabular_fixed_point(objective: str, space: TabularSpace, base_logits, *, beta: float, continuation: int = 8,
                        tol: float = 1e-9, **kw) -> np.ndarray:
    """Logits (log conditionals) of the fixed point of `objective` + anchor: every X_h constant in
    v. Found by continuation from the base, which is the fixed point of the anchor alone: the
    objective's part of the field is scaled by lam = 1/continuation, 2/continuation, ..., 1 (the
    same as solving with anchor beta / lam), each solve (a root finder on the stationarity
    conditions) starting from the previous one. This follows the branch of fixed points connected
    to the base, the one training from the base reaches while that branch stays stable (with a
    live, strongly copying teacher there can be others). Raises if the residual stays above `tol`.
    Settings as in `objective_field`.

    Predicted structure: grpo and sdsd_cmi at coef = 1 give p0(y) exp(R(y) / beta) / Z with R
    constant on the correct set (ratios among correct outputs exactly those of p0); sdsd and
    sdsd_marginal give per-prefix geometric means of (mixtures of) demonstration-conditioned
    teachers, which tilt toward what likely demonstrations say."""
    base_logits = space.check_logits(base_logits, "base_logits")
    if beta <= 0:
        raise ValueError(f"tabular_fixed_point needs an anchor beta > 0 (the continuation starts at the base), "
                         f"got {beta}")
    K = space.K

    def unpack(z):
        return np.concatenate([z.reshape(space.n_prefix, K - 1), np.zeros((space.n_prefix, 1))], 1)

    def residual(z, lam):
        if not np.all(np.isfinite(z)):
            return np.full_like(z, 1e6)
        logits = unpack(z)
        X = objective_field(objective, space, logits, base_logits, beta=beta / lam, **kw) * lam
        visit = space.visits(space.probs(logits))
        return ((X[:, :-1] - X[:, -1:]) / visit[:, None]).ravel()

    x0 = space.conditionals(base_logits)
    z = (x0[:, :-1] - x0[:, -1:]).ravel()
    for lam in np.arange(1, continuation + 1) / continuation:
        sol = root(residual, z, args=(lam,), method="hybr", options={"xtol": 1e-13})
        z = sol.x
    err = float(np.max(np.abs(residual(z, 1.0))))
    if not err < tol:
        raise RuntimeError(f"tabular_fixed_point({objective}): no fixed point found on the branch from the base "
                           f"(max residual {err:.2e}; {sol.message})")
    return space.conditionals(unpack(z))


# ---------------------------------------------------------------------------------------------
# report: figures + table

EXAMPLE_P0 = np.array([0.30, 0.22, 0.16, 0.10, 0.07, 0.10, 0.05])   # 5 correct, then 2 incorrect
EXAMPLE_CORRECT = np.array([True] * 5 + [False] * 2)
EXAMPLE_STRENGTH = 0.5
EXAMPLE_BETA = 0.1
EXAMPLE_MS = (1, 2, 4, 8, 16, 32, 64)
# the tabular example of the objectives as coded: 3 strategies x 3 routes, route 2 is wrong
TABULAR_CORRECT = [y2 != 2 for y1 in range(3) for y2 in range(3)]
TABULAR_BASE_PROBS = ((0.5, 0.3, 0.2), (0.6, 0.25, 0.15), (0.3, 0.5, 0.2), (0.45, 0.3, 0.25))  # per prefix
TABULAR_SETTINGS = {"kappa": 1.0, "G": 8, "M": 2, "teacher": "live"}
TABULAR_BETAS = (0.5, 0.2)
TABULAR_ROWS = (("grpo", {}), ("sdsd", {}), ("sdsd_marginal", {}), ("sdsd_cmi", {"coef": 1.0}),
                ("sdsd_cmi", {"coef": 0.0}), ("sdsd_anticopy", {"coef": 3.0}))


def tabular_report() -> tuple[dict, list[str]]:
    """Fixed points of the objectives as the code implements them on the tabular example
    (`objective_field`): the top correct output's share among correct outputs (base: 0.368), the
    max log-ratio error vs the base among correct outputs, and the correct mass. Returns (numbers,
    Markdown lines)."""
    space = TabularSpace(3, 2, TABULAR_CORRECT)
    base = np.log(np.array(TABULAR_BASE_PROBS))
    p0 = space.probs(base)
    c = space.correct
    top = int(np.argmax(np.where(c, p0, -1.0)))
    rows, md = {}, []
    for beta in TABULAR_BETAS:
        for name, extra in TABULAR_ROWS:
            label = name + "".join(f" {k}={v:g}" for k, v in extra.items())
            kw = {**TABULAR_SETTINGS, **extra}
            try:
                p = space.probs(tabular_fixed_point(name, space, base, beta=beta, **kw))
            except RuntimeError:
                rows[f"{label} beta={beta:g}"] = None
                md.append(f"| {label} | {beta:g} | no fixed point found | | |")
                continue
            r = {"top_share": float(p[top] / p[c].sum()), "max_log_ratio_error": max_log_ratio_error(p, p0, c),
                 "correct_mass": float(p[c].sum())}
            rows[f"{label} beta={beta:g}"] = r
            md.append(f"| {label} | {beta:g} | {r['top_share']:.3f} | {r['max_log_ratio_error']:.3f} "
                      f"| {r['correct_mass']:.3f} |")
    head = ["## The objectives as the code implements them (tabular example)", "",
            "Outputs: 2 tokens from 3 (first = strategy, second = route; route 2 is wrong), an "
            f"autoregressive tabular policy with base conditionals {[list(r) for r in TABULAR_BASE_PROBS]}, "
            f"a live copy teacher (kappa {TABULAR_SETTINGS['kappa']:g}), groups of {TABULAR_SETTINGS['G']}, "
            f"M = {TABULAR_SETTINGS['M']}. Fixed points of each objective plus the anchor beta KL(pi || p0) "
            "(`objective_field`, checked against the shipped objectives in tests/unit/test_theory_code.py). "
            f"Base: top share {p0[top] / p0[c].sum():.3f}, correct mass {p0[c].sum():.3f}.", "",
            "| objective | beta | top share among correct | max log-ratio error | correct mass |",
            "|---|---|---|---|---|"]
    return {"base_top_share": float(p0[top] / p0[c].sum()), "base_correct_mass": float(p0[c].sum()),
            "rows": rows}, head + md + [""]


def theory_report(out_dir=None, strength: float = EXAMPLE_STRENGTH, n_iter: int = 20) -> dict:
    """The exact example: key numbers, and the curves `analysis/` draws (tilt_vs_base,
    iterated_dynamics, marginal_bias). With `out_dir`, also writes theory.md there.

    Example: p0 = EXAMPLE_P0 over 7 outputs (5 correct), copy_kernel_teacher(p, strength) without
    concept groups.
    """
    p0, correct = EXAMPLE_P0, EXAMPLE_CORRECT
    top = int(np.argmax(np.where(correct, p0, -1.0)))
    T = copy_kernel_teacher(p0, strength)
    d = demo_distribution(p0, correct)

    # 1. tilt vs base probability, for several copy strengths
    tilt = {f"{s:g}": expected_pcmi(p0, copy_kernel_teacher(p0, s), d).tolist() for s in (0.1, 0.3, strength, 0.8)}

    # 2. iterated on-policy SDSD vs RL
    traj = sdsd_iterate(p0, correct, lambda p: copy_kernel_teacher(p, strength), n_iter)
    rl = rl_optimum(p0, correct, EXAMPLE_BETA)

    # 3. bias of the mitigations vs M
    Ms = list(EXAMPLE_MS)
    sdsd_err = max_log_ratio_error(sdsd_optimum(p0, correct, T), p0, correct)
    exact = {"exact_max_tuples": 1_000_000}                # every M in EXAMPLE_MS exactly
    marg = marginal_teacher_bias(p0, correct, T, Ms, **exact)
    cmi_pool = cmi_reweighting_error(p0, correct, T, Ms, **exact)
    cmi_mean = [max_log_ratio_error(cmi_reweighted_optimum(p0, correct, T, M, **exact), p0, correct)
                for M in Ms]

    res = {
        "strength": strength,
        "sdsd_max_log_ratio_error": sdsd_err,
        "rl_max_log_ratio_error": max_log_ratio_error(rl, p0, correct),
        **{f"sdsd_marginal_M{M}": float(e) for M, e in zip(Ms, marg, strict=True)},
        **{f"sdsd_cmi_M{M}": float(e) for M, e in zip(Ms, cmi_pool, strict=True)},
        **{f"sdsd_cmi_mean_target_M{M}": float(e) for M, e in zip(Ms, cmi_mean, strict=True)},
        **{f"iterated_top_share_{t}": float(traj[t, top]) for t in (0, 5, 10, n_iter)},
        "rl_top_share": float(rl[top]),
    }
    first_90 = np.flatnonzero(traj[:, top] > 0.9)
    res["iterations_to_top_share_0.9"] = int(first_90[0]) if first_90.size else None

    def row(name, key):
        return f"| {name} | " + " | ".join(f"{res[f'{key}_M{M}']:.4f}" for M in Ms) + " |"

    md = [
        "# Theory: SDSD vs RL on an explicit output space",
        "",
        f"p0 = {EXAMPLE_P0.tolist()} (first 5 correct, last 2 incorrect); teacher = "
        f"`copy_kernel_teacher(p, {strength:g})`; RL beta = {EXAMPLE_BETA:g}. "
        "Error = max log-ratio error vs p0 among correct outputs (0 = ratios preserved).",
        "",
        f"- plain SDSD: {sdsd_err:.4f}",
        f"- RL optimum: {res['rl_max_log_ratio_error']:.1e}",
        "",
        "| mitigation | " + " | ".join(f"M={M}" for M in Ms) + " |",
        "|---|" + "---|" * len(Ms),
        row("SDSD + marginalised teacher", "sdsd_marginal"),
        row("SDSD + CMI reweighting, one pool of M demos (E over pools)", "sdsd_cmi"),
        row("SDSD + CMI reweighting, expected target", "sdsd_cmi_mean_target"),
        "",
        "CMI reweighting with fresh demonstrations at every update has the exact p0 as its reverse-KL "
        "fixed point for every M (the tilt estimate is unbiased in log space); the rows show the error "
        "of the target set by one fixed pool of M demonstrations (~1/sqrt(M)) and of the "
        "arithmetic-mean target (~1/M).",
        "",
        "## Probability of the top output under on-policy SDSD iteration",
        "",
        f"| iteration | 0 | 5 | 10 | {n_iter} | RL optimum |",
        "|---|---|---|---|---|---|",
        "| top share | " + " | ".join(f"{res[f'iterated_top_share_{t}']:.4f}" for t in (0, 5, 10, n_iter))
        + f" | {res['rl_top_share']:.4f} |",
        "",
        f"Top share first exceeds 0.9 at iteration {res['iterations_to_top_share_0.9']}.",
        "",
    ]
    res["objectives"], tab_md = tabular_report()
    md += tab_md
    res["curves"] = {
        "p0": p0.tolist(), "correct": correct.tolist(), "top": top, "beta": EXAMPLE_BETA, "strength": strength,
        "tilt_by_strength": tilt, "iterated_top_share": traj[:, top].tolist(), "rl_top_share": float(rl[top]),
        "Ms": Ms, "marginal": [float(e) for e in marg], "cmi_pool": [float(e) for e in cmi_pool],
        "cmi_mean": [float(e) for e in cmi_mean], "sdsd_error": float(sdsd_err)}
    if out_dir is not None:
        write_text(Path(out_dir) / "theory.md", "\n".join(md))
    return res
