"""Theory against code: the SHIPPED objectives, run with exact expected gradients on an enumerable
output space, follow mitigate.theory's expected gradient and converge to its fixed points.

The spaces: every output is 2 (or 3) tokens from a vocabulary of 3 (or 2); the policy is tabular
(one softmax per prefix) behind the Policy interface; the teacher is the same table with a copy bonus kappa on
the demonstration's token at each position (teacher "live": the student's current logits, teacher
"base": the frozen base's), so `Teacher` from mitigate/objectives/teacher.py runs unchanged.

Exact expectations over groups. One `Batch` holds every group of G rollouts (as a multiset, one
prompt each) and, where demonstrations are random, every joint draw of them. The rows' log-probs
carry their probability in their gradient only (`lp.detach() + w * (lp - lp.detach())`: the same
values, the gradient scaled by w), which is exact because every objective's loss depends on a
row's gradient-carrying log-probs only through that row (advantages, teachers and baselines are
detached). So the batch loss's gradient is the expected gradient over groups and draws, one prompt
per step. With G = 2 the real `pick_demonstrations` is deterministic (each pool has one rollout);
with G = 3 its uniform draws are enumerated by a stand-in whose law is checked against the real
function. Objectives use aggregation seq_sum (a fixed normaliser, so the batch mean is the
expectation; with one prompt per step token_mean is seq_sum / L) and the KL anchor is added as
recipes/train.py adds it: kl_coef * token_mean(reverse_kl_anchor), so beta = kl_coef / L.

Settings: copy strength kappa = 1, anchor beta = 0.5, live teacher unless stated. Tolerances:
gradients 1e-10 (float64 throughout); trained vs predicted probabilities 1e-6 after 60 exact
natural-gradient steps (measured: at most 2e-8); ratio preservation 1e-3 in max log-ratio (measured:
~1e-15); the tilt and flattening margins are stated where they are asserted.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch

from mitigate import config as C
from mitigate import theory as th
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives import teacher as teacher_module
from mitigate.objectives.base import make_term
from mitigate.ops import aggregate, gather_tokens, pick_demonstrations, reverse_kl_anchor, token_divergence
from mitigate.policies import FullScores, target_scores

KAPPA, BETA, L = 1.0, 0.5, 2
# 9 outputs (y1, y2): 6 correct (y2 != 2); y1 is the "strategy", y2 the route
SPACE = th.TabularSpace(3, L, [y2 != 2 for y1 in range(3) for y2 in range(3)])
BASE = np.log([[0.5, 0.3, 0.2], [0.6, 0.25, 0.15], [0.3, 0.5, 0.2], [0.45, 0.3, 0.25]])
# 4 outputs, 3 correct: small enough to enumerate groups of 3 with every demonstration draw
SMALL = th.TabularSpace(2, L, [True, True, True, False])
SMALL_BASE = np.log([[0.7, 0.3], [0.6, 0.4], [0.6, 0.4]])
# 3-token outputs (8, 5 correct): the anchor's KL still to come spans two positions
DEEP = th.TabularSpace(2, 3, [True, True, False, True, True, False, True, False])
DEEP_BASE = np.log([[0.6, 0.4], [0.7, 0.3], [0.45, 0.55], [0.8, 0.2], [0.5, 0.5], [0.65, 0.35], [0.3, 0.7]])


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exact comparisons (1e-10) need float64 throughout, ops' own buffers included."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --------------------------------------------------------------------------- the tabular policy
class TabularModule(torch.nn.Module):
    def __init__(self, logits, kappa: float):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(np.asarray(logits), dtype=torch.float64).clone())
        self.kappa = kappa


class TabularPolicy:
    """The Policy interface over a TabularSpace. A student context is the prompt [99]; a teacher
    context is [99, y*_1, ..., y*_L] (`TabularTask.teacher_context`): position t gets kappa on y*_t."""

    def __init__(self, space: th.TabularSpace, logits, kappa: float = KAPPA, frozen: bool = False):
        self.space, self.model = space, TabularModule(logits, kappa)
        self.model.logits.requires_grad_(not frozen)
        self.offset = torch.as_tensor(space.offset)

    def _prefix_index(self, tokens: torch.Tensor) -> torch.Tensor:
        cols, value = [], torch.zeros(len(tokens), dtype=torch.long)
        for t in range(tokens.shape[1]):
            cols.append(self.offset[t] + value)
            value = value * self.space.K + tokens[:, t]
        return torch.stack(cols, 1)

    def logprobs(self, contexts, tokens, mask):
        logits = self.model.logits[self._prefix_index(tokens)]  # [B, L, K]
        demo = torch.tensor([c[1:] if len(c) > 1 else [-1] * self.space.L for c in contexts])
        bonus = torch.nn.functional.one_hot(demo.clamp(min=0), self.space.K) * (demo >= 0)[..., None]
        return torch.log_softmax(logits + self.model.kappa * bonus, -1)

    def scores(self, contexts, tokens, mask):  # the Policy interface's full-tensor path (a vocabulary of K)
        return FullScores(self.logprobs(contexts, tokens, mask), tokens)

    def completion_mask(self, tokens):
        return torch.ones(tokens.shape, dtype=torch.float64)

    def frozen_copy(self):
        return TabularPolicy(self.space, self.model.logits.detach(), self.model.kappa, frozen=True)

    def sample(self, *args, **kwargs):
        raise NotImplementedError("expectations are enumerated, never sampled")

    def save(self, *args, **kwargs):
        raise NotImplementedError


class Prompt:
    tokens = [99]


class TabularTask:
    name = "tabular"

    def teacher_context(self, prompt, y_star):
        return list(prompt.tokens) + torch.as_tensor(y_star).tolist()


# --------------------------------------------------------------------------- exact expectations
class Enumeration:
    """Every multiset of G outputs (one prompt each) and, with M given, every joint demonstration
    draw of `pick_demonstrations` (uniform with replacement from the correct rollouts of the group
    other than the row; the row itself when it is the only correct one): rows [B], weights from pi."""

    def __init__(self, space: th.TabularSpace, G: int, M: int | None = None):
        self.space, self.G, self.M = space, G, M
        outputs, mult, demo_p, demos = [], [], [], []
        for group in itertools.combinations_with_replacement(range(space.n), G):
            m = math.factorial(G) / np.prod([math.factorial(c) for c in Counter(group).values()])
            good = [i for i in range(G) if space.correct[group[i]]]
            pools = [[j for j in good if j != i] if len(good) > 1 else good for i in range(G)]
            if M is None:
                assert all(len(p) <= 1 for p in pools), "random demonstration draws need M (enumerated)"
                outputs.append(group), mult.append(m), demo_p.append(1.0)
                continue
            per_row = [list(itertools.product(p, repeat=M)) if p else [(-1,) * M] for p in pools]
            for draw in itertools.product(*per_row):
                base = len(outputs) * G
                demos.append([[base + j if j >= 0 else -1 for j in row] for row in draw])
                outputs.append(group), mult.append(m)
                demo_p.append(float(np.prod([len(p) ** -M for p in pools if p])))
        self.outputs = np.array(outputs)                                  # [N, G]
        self.factor = np.array(mult) * np.array(demo_p)                   # multiplicity x draw probability
        self.demos = torch.tensor(demos).reshape(-1, M) if M is not None else None
        self.N, self.B = len(outputs), len(outputs) * G
        self.tokens = torch.as_tensor(space.outputs[self.outputs.reshape(-1)])
        self.group_index = torch.arange(self.N).repeat_interleave(G)
        self.correct = torch.as_tensor(space.correct[self.outputs.reshape(-1)])
        self.prompts = [Prompt() for _ in range(self.N)]
        self.contexts = [Prompt.tokens] * self.B
        self.mask = torch.ones(self.tokens.shape, dtype=torch.float64)

    def row_weights(self, pi: np.ndarray) -> torch.Tensor:
        """Gradient weight per row: N * P(group, draw), so the batch mean over rows (seq_sum) is
        the expectation of the per-rollout loss."""
        p = self.factor * np.prod(pi[self.outputs], axis=1)
        assert abs(p.sum() - 1) < 1e-9
        return torch.as_tensor(self.N * p).repeat_interleave(self.G)

    def pick(self, group_index, correct, m, generator):  # stands in for ops.pick_demonstrations
        """The enumerated draws; for m < M the first m of the M enumerated (uniform, with
        replacement) draws, whose law is that of m draws."""
        assert m <= self.M and len(group_index) == self.B and torch.equal(correct, self.correct)
        return self.demos[:, :m].clone()


class Harness:
    """One run of an objective (and the shared KL anchor) on an Enumeration."""

    def __init__(self, name: str, enum: Enumeration, base_logits, logits=None, teacher: str = "live",
                 beta: float = BETA, anchor: str = "reverse_kl", **fields):
        self.name, self.enum, self.beta, self.anchor = name, enum, beta, anchor
        entry = OBJECTIVES.get(name)
        self.fn = make_term(entry)
        if name not in th.RL_OBJECTIVES:
            fields["teacher"] = teacher
        self.cfg = C.build(entry.config, {"name": name, "aggregation": "seq_sum", **fields})
        self.policy = TabularPolicy(enum.space, base_logits if logits is None else logits)
        self.base = TabularPolicy(enum.space, base_logits, frozen=True)
        self.ref = target_scores(self.base, enum.contexts, enum.tokens, enum.mask)
        self.ctx = Context(task=TabularTask(), policy=self.policy, reference=self.base,
                           teacher=Teacher(teacher, self.policy, self.base), generator=torch.Generator().manual_seed(0),
                           reference_generator=torch.Generator().manual_seed(0), temperature=1.0,
                           batch_size=enum.B, step=0)

    def logits(self) -> np.ndarray:
        return self.policy.model.logits.detach().numpy().copy()

    def set_logits(self, logits) -> None:
        with torch.no_grad():
            self.policy.model.logits.copy_(torch.as_tensor(np.asarray(logits)))

    def gradient(self) -> np.ndarray:
        """The exact expected gradient (per rollout) of objective + beta KL(pi || p0) at the current logits."""
        e = self.enum
        self.ctx.step += 1  # the teacher draws (and caches) demonstrations once per step
        lp = self.policy.logprobs(e.contexts, e.tokens, e.mask)
        w = e.row_weights(e.space.probs(self.logits()))[:, None, None]
        batch = Batch(prompts=e.prompts, group_index=e.group_index, contexts=e.contexts, tokens=e.tokens,
                      mask=e.mask, rewards=e.correct.double(), correct=e.correct, labels=torch.full((e.B,), -1),
                      scores=FullScores(lp.detach() + w * (lp - lp.detach()), e.tokens),
                      old_token_logprobs=gather_tokens(lp.detach(), e.tokens), reference=self.ref)
        with mock.patch.object(teacher_module, "pick_demonstrations", e.pick if e.demos is not None
                               else pick_demonstrations):
            loss, _ = self.fn(batch, self.ctx, self.cfg)
        if self.anchor == "reverse_kl":  # as recipes/train.py adds it
            anchor, _ = reverse_kl_anchor(batch.divergence(self.ref, "reverse_kl"), batch.token_logprobs(), e.mask)
        else:  # the per-token KL without the score term, for contrast
            anchor = batch.divergence(self.ref, "reverse_kl")
        loss = loss + self.beta * e.space.L * aggregate(anchor, e.mask, "token_mean")  # kl_coef = beta L
        (g,) = torch.autograd.grad(loss, self.policy.model.logits)
        return g.numpy()

    def train(self, steps: int, lr: float, optimizer: str = "natural") -> np.ndarray:
        """Descend the exact expected gradients from the current logits; returns pi.

        natural: the exact natural gradient of the tabular policy (its Fisher is block-diagonal,
        pi(h) (diag q_h - q_h q_h^T) per prefix, so the step is g_h / (pi(h) q_h) up to a constant
        per prefix); adam: torch's Adam, lr decayed linearly to 2%. Either has the fixed points of
        plain gradient descent: the zeros of the expected gradient."""
        space = self.enum.space
        if optimizer == "adam":
            opt = torch.optim.Adam(self.policy.model.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.02, 1 - s / steps))
        for _ in range(steps):
            g = self.gradient()
            if optimizer == "adam":
                self.policy.model.logits.grad = torch.as_tensor(g)
                opt.step()
                sched.step()
            else:
                logits = self.logits()
                q, visit = np.exp(space.conditionals(logits)), space.visits(space.probs(logits))
                self.set_logits(logits - lr * g / (q * visit[:, None]))
        return space.probs(self.logits())


ENUM = {"G2": Enumeration(SPACE, 2), "G3": Enumeration(SMALL, 3, M=2), "L3": Enumeration(DEEP, 2)}
SETTINGS = {"G2": (SPACE, BASE, 2), "G3": (SMALL, SMALL_BASE, 3), "L3": (DEEP, DEEP_BASE, 2)}


def theory_kw(name: str, G: int, teacher: str = "live", **fields) -> dict:
    kw = {"beta": BETA, "G": G, "kappa": KAPPA, "teacher": teacher}
    kw.update({k: v for k, v in fields.items() if k in ("M", "coef", "k")})
    return kw


def top_correct(space: th.TabularSpace, p0: np.ndarray) -> int:
    return int(np.argmax(np.where(space.correct, p0, -1.0)))


def share_gain(space, p, p0) -> float:
    """log of the top correct output's share among correct outputs, relative to the base's."""
    top, c = top_correct(space, p0), space.correct
    return float(np.log(p[top] / p[c].sum()) - np.log(p0[top] / p0[c].sum()))


# --------------------------------------------------------------------------- 1. the enumerator is pick_demonstrations
def test_enumerated_draws_have_the_law_of_pick_demonstrations():
    """The stand-in enumerates exactly the draws `ops.pick_demonstrations` makes: for each pool
    composition of a group of 3, the real function's empirical law of (d_1, d_2) per row is uniform
    over pool x pool, which is what Enumeration weights."""
    reps, M = 1500, 2
    for correct in ([True, True, True], [True, False, True], [False, True, False]):
        groups = torch.arange(reps).repeat_interleave(3)
        demos = pick_demonstrations(groups, torch.tensor(correct * reps), M, torch.Generator().manual_seed(3))
        demos = (demos - 3 * groups[:, None]).view(reps, 3, M)  # within-group indices
        good = [i for i in range(3) if correct[i]]
        for i in range(3):
            pool = [j for j in good if j != i] if len(good) > 1 else good
            counts = Counter(map(tuple, demos[:, i].tolist()))
            assert set(counts) == set(itertools.product(pool, repeat=M))
            expect = reps / len(pool) ** M
            assert all(abs(c - expect) < 5 * math.sqrt(expect) for c in counts.values())
    e = ENUM["G3"]
    assert e.demos.shape == (e.B, 2) and abs(e.row_weights(SMALL.probs(SMALL_BASE)).sum() / e.B - 1) < 1e-12


# --------------------------------------------------------------------------- 2. the expected gradient, term by term
FIELD_CASES = [
    ("grpo", {}), ("grpo_negative", {}), ("grpo_passk", {"k": 2}), ("sdsd", {}), ("sdsd_marginal", {"M": 2}),
    ("sdsd_cmi", {"M": 2, "coef": 1.0}),
    ("sdsd_cmi", {"M": 2, "coef": 0.0}), ("sdsd_cmi", {"M": 2, "coef": 0.4}), ("sdsd_anticopy", {"M": 2, "coef": 3.0}),
]


# grpo has no teacher: it runs once per setting, under the name "live" (unused)
TEACHER_CASES = [(n, f, t) for n, f in FIELD_CASES for t in (["live"] if n in th.RL_OBJECTIVES else ["live", "base"])]


@pytest.mark.parametrize("setting", ["G2", "G3", "L3"])
@pytest.mark.parametrize("name,fields,teacher", TEACHER_CASES, ids=[f"{n}-{f}-{t}" for n, f, t in TEACHER_CASES])
def test_code_gradient_is_the_theory_gradient(setting, teacher, name, fields):
    """At random logits, the shipped objective's exact expected gradient (plus the anchor) equals
    theory.expected_gradient to 1e-10: the theory models what the code computes, including shared
    demonstrations, self-demonstrations of a group's only correct rollout, masked groups, the
    leave-one-out baselines and GRPO's group normalisation."""
    space, base_logits, G = SETTINGS[setting]
    h = Harness(name, ENUM[setting], base_logits, teacher=teacher, **fields)
    rng = np.random.default_rng(7)
    for _ in range(2):
        logits = base_logits + 0.6 * rng.standard_normal(base_logits.shape)
        h.set_logits(logits)
        expected = th.expected_gradient(name, space, logits, base_logits, **theory_kw(name, G, teacher, **fields))
        got = h.gradient()
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- 3. training converges to the prediction
CONVERGENCE = {  # name, fields, setting
    "grpo": ("grpo", {}, "G2"),
    "grpo_negative": ("grpo_negative", {}, "G2"),
    "grpo_passk": ("grpo_passk", {"k": 2}, "G3"),
    "sdsd": ("sdsd", {}, "G2"),
    "sdsd_cmi": ("sdsd_cmi", {"M": 2, "coef": 1.0}, "G2"),
    "sdsd_marginal": ("sdsd_marginal", {"M": 2}, "G3"),
    "sdsd_anticopy": ("sdsd_anticopy", {"M": 2, "coef": 3.0}, "G2"),
}
STEPS, LR, TOL = 60, 1.0, 1e-6  # natural-gradient steps; tolerance on max_y |pi(y) - pi_predicted(y)|


def train_and_predict(key: str, optimizer: str = "natural", steps: int = STEPS, lr: float = LR) -> dict:
    name, fields, setting = CONVERGENCE[key]
    space, base_logits, G = SETTINGS[setting]
    t0 = time.time()
    p = Harness(name, ENUM[setting], base_logits, **fields).train(steps, lr, optimizer)
    pred = space.probs(th.tabular_fixed_point(name, space, base_logits, **theory_kw(name, G, **fields)))
    return dict(p=p, pred=pred, p0=space.probs(base_logits), space=space, seconds=time.time() - t0)


@pytest.fixture(scope="module")
def converged():
    """Each objective trained from the base with exact expected gradients, and its prediction."""
    return {key: train_and_predict(key) for key in CONVERGENCE}


@pytest.mark.parametrize("key", list(CONVERGENCE))
def test_training_reaches_the_predicted_fixed_point(converged, key):
    r = converged[key]
    err = np.abs(r["p"] - r["pred"]).max()
    assert err < TOL, f"{key}: max |p - predicted| = {err:.2e} (tolerance {TOL:.0e})"


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CONVERGENCE))
def test_adam_reaches_the_same_fixed_point(key):
    r = train_and_predict(key, optimizer="adam", steps=400, lr=0.1)
    assert np.abs(r["p"] - r["pred"]).max() < 1e-4


@pytest.mark.parametrize("key", ["grpo_negative", "grpo_passk"])
def test_negative_only_and_passk_rows_preserve_base_ratios(converged, key):
    """Both give every correct output the same expected advantage (0 for negative-only), so their
    fixed points keep the base's ratios among correct outputs, as GRPO's does (issue 25)."""
    r = converged[key]
    assert th.max_log_ratio_error(r["pred"], r["p0"], r["space"].correct) < 1e-9
    assert th.max_log_ratio_error(r["p"], r["p0"], r["space"].correct) < 1e-3
    assert r["p"][r["space"].correct].sum() > r["p0"][r["space"].correct].sum() + 0.01  # and it learned


def test_grpo_preserves_base_ratios(converged):
    r = converged["grpo"]
    assert th.max_log_ratio_error(r["pred"], r["p0"], SPACE.correct) < 1e-9      # prediction: exact
    assert th.max_log_ratio_error(r["p"], r["p0"], SPACE.correct) < 1e-3         # trained
    assert r["p"][SPACE.correct].sum() > r["p0"][SPACE.correct].sum() + 0.1     # and it learned


def test_sdsd_tilts_toward_the_top_output(converged):
    """Plain SDSD (token level, live copy teacher): the top correct output's share among correct
    outputs grows well beyond the base's (predicted and trained), unlike GRPO's."""
    r = converged["sdsd"]
    top = top_correct(SPACE, r["p0"])
    assert share_gain(SPACE, r["pred"], r["p0"]) > 0.5 and share_gain(SPACE, r["p"], r["p0"]) > 0.5
    assert r["p"][top] > 2 * r["p0"][top]
    assert th.max_log_ratio_error(r["p"], r["p0"], SPACE.correct) > 1.0
    assert share_gain(SPACE, converged["grpo"]["p"], r["p0"]) < 1e-3


def test_sdsd_cmi_preserves_ratios_among_correct_outputs(converged):
    r = converged["sdsd_cmi"]
    assert th.max_log_ratio_error(r["pred"], r["p0"], SPACE.correct) < 1e-9
    assert th.max_log_ratio_error(r["p"], r["p0"], SPACE.correct) < 1e-3
    assert th.max_log_ratio_error(converged["sdsd"]["p"], r["p0"], SPACE.correct) > 1.0
    assert r["p"][SPACE.correct].sum() > r["p0"][SPACE.correct].sum() + 0.1  # the teacher's signal on incorrect ones


def test_sdsd_marginal_keeps_most_of_the_tilt_with_a_copy_teacher(converged):
    """With a copy-prone (not Bayes-consistent) teacher the M-mixture removes little of the tilt:
    predicted and trained, it stays between the base and plain SDSD, close to SDSD."""
    r = converged["sdsd_marginal"]
    sdsd = SMALL.probs(th.tabular_fixed_point("sdsd", SMALL, SMALL_BASE, **theory_kw("sdsd", 3)))
    gain, sdsd_gain = share_gain(SMALL, r["p"], r["p0"]), share_gain(SMALL, sdsd, r["p0"])
    assert 0.5 * sdsd_gain < gain < sdsd_gain - 1e-3


# --------------------------------------------------------------------------- 4. stationarity at the prediction
STATIONARY = [
    ("grpo", {}, "G2"), ("sdsd", {}, "G2"), ("sdsd_cmi", {"M": 2, "coef": 1.0}, "G2"),
    ("sdsd_cmi", {"M": 2, "coef": 0.0}, "G2"), ("sdsd_cmi", {"M": 2, "coef": 0.5}, "G3"),
    ("sdsd_marginal", {"M": 2}, "G3"), ("sdsd_anticopy", {"M": 2, "coef": 3.0}, "G2"),
]


@pytest.mark.parametrize("name,fields,setting", STATIONARY, ids=[f"{n}-{f}-{s}" for n, f, s in STATIONARY])
def test_code_is_stationary_at_the_predicted_fixed_point(name, fields, setting):
    space, base_logits, G = SETTINGS[setting]
    pred = th.tabular_fixed_point(name, space, base_logits, **theory_kw(name, G, **fields))
    h = Harness(name, ENUM[setting], base_logits, **fields)
    assert np.abs(h.gradient()).max() > 1e-3                     # the base is not a fixed point
    h.set_logits(pred)
    assert np.abs(h.gradient()).max() < 1e-9


def test_sdsd_anticopy_flattens(converged):
    """coef 3: the anti-copy reward outweighs the token-level tilt: the top output's share among
    correct outputs falls below the base's, and the base ratios are not kept."""
    r = converged["sdsd_anticopy"]
    assert share_gain(SPACE, r["p"], r["p0"]) < -0.1
    assert th.max_log_ratio_error(r["p"], r["p0"], SPACE.correct) > 0.3


def test_fixed_points_say_what_the_docstrings_say():
    """sdsd_cmi at coef 1: base ratios among correct outputs; coef 0 (sequence-level SDSD) tilts
    like SDSD; sdsd_anticopy at coef 3 flattens (the top output's share falls below the base's)."""
    p0 = SPACE.probs(BASE)

    def fixed(name, **fields):
        return SPACE.probs(th.tabular_fixed_point(name, SPACE, BASE, **theory_kw(name, 2, **fields)))

    for teacher in ("live", "base"):
        assert th.max_log_ratio_error(fixed("sdsd_cmi", coef=1.0, teacher=teacher), p0, SPACE.correct) < 1e-9
    assert share_gain(SPACE, fixed("sdsd_cmi", coef=0.0), p0) > 0.5
    half = share_gain(SPACE, fixed("sdsd_cmi", coef=0.5), p0)
    assert 0 < half < share_gain(SPACE, fixed("sdsd_cmi", coef=0.0), p0)
    anticopy = fixed("sdsd_anticopy", coef=3.0, M=2)
    assert share_gain(SPACE, anticopy, p0) < -0.1
    assert th.max_log_ratio_error(anticopy, p0, SPACE.correct) > 0.3


# --------------------------------------------------------------------------- 5. the KL anchor
def _two_token_space(seed: int, V: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1 + V, V, dtype=torch.float64, generator=g, requires_grad=True)  # root + one per first token
    ref = torch.randn(1 + V, V, dtype=torch.float64, generator=g).log_softmax(-1)
    tokens = torch.tensor(list(itertools.product(range(V), repeat=2)))                     # all V**2 outputs
    prefix = torch.stack([torch.zeros(len(tokens), dtype=torch.long), 1 + tokens[:, 0]], 1)
    return logits, ref, tokens, prefix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reverse_kl_anchor_has_the_gradient_of_the_sequence_kl(seed):
    """sum_y pi(y) grad sum_t surrogate_t(y) = grad KL(pi || ref) over sequences (autograd on the
    enumerated KL) to 1e-10; the per-token KL alone (no score term) is off by far more than 1e-6."""
    logits, ref, tokens, prefix = _two_token_space(seed)
    lp = logits.log_softmax(-1)[prefix]                                   # [n, 2, V]
    rlp = ref[prefix]
    mask = torch.ones(tokens.shape, dtype=torch.float64)
    seq = gather_tokens(lp, tokens).sum(-1)                              # log pi(y)
    pi = seq.exp().detach()
    surrogate, k = reverse_kl_anchor(token_divergence(lp, rlp, "reverse_kl"), gather_tokens(lp, tokens), mask)
    (g_anchor,) = torch.autograd.grad((pi * surrogate.sum(-1)).sum(), logits, retain_graph=True)
    kl = (seq.exp() * (seq - gather_tokens(rlp, tokens).sum(-1))).sum()   # exact sequence-level KL
    (g_kl,) = torch.autograd.grad(kl, logits, retain_graph=True)
    np.testing.assert_allclose(g_anchor.numpy(), g_kl.numpy(), rtol=0, atol=1e-10)
    assert abs(float((pi * k.sum(-1)).sum()) - kl.detach().item()) < 1e-12       # its value is the KL too
    per_token = token_divergence(lp, rlp, "reverse_kl")                  # the per-token KL without the score term
    (g_tok,) = torch.autograd.grad((pi * per_token.sum(-1)).sum(), logits)
    assert np.abs(g_tok.numpy() - g_kl.numpy()).max() > 1e-3


def test_per_token_kl_anchor_moves_grpo_off_the_rl_optimum():
    """At GRPO's predicted fixed point (p0 exp(R(r) / beta) / Z, ratios preserved) the code's
    gradient with the shipped anchor vanishes; with the per-token KL alone in its place it does not."""
    pred = th.tabular_fixed_point("grpo", SPACE, BASE, **theory_kw("grpo", 2))
    full = Harness("grpo", ENUM["G2"], BASE, logits=pred)
    assert np.abs(full.gradient()).max() < 1e-9
    per_token = Harness("grpo", ENUM["G2"], BASE, logits=pred, anchor="per_token")
    assert np.abs(per_token.gradient()).max() > 1e-3
