"""The SDSD-side rows the field asks for (issue 25), each against brute force: the generalised JSD
and the top-k-with-tail divergence (numpy on the full distributions), the interpolated teacher of
`sdsd_interp`, and every demonstration rule of `mitigate.objectives.demos` on hand-made groups
(including groups with one and with no correct rollout); then theory against code on the tabular
spaces of tests/unit/test_theory_code.py: `sdsd_interp` and the demonstration rules `first` and
`least_likely` (exact expected gradients, tolerance 1e-10 in float64; stationarity at the predicted
fixed point, 1e-9), and the law of `distinct` and `least_likely` draws against `theory._demo_law`
(empirical frequencies within 5 standard errors)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from test_theory_code import BASE, BETA, KAPPA, SMALL, SMALL_BASE, SPACE, Enumeration, Harness, Prompt, share_gain

from mitigate import config as C
from mitigate import theory as th
from mitigate.core.resume import ResumeError
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives import demos as D
from mitigate.objectives.sdsd_interp import interpolated_teacher
from mitigate.ops import (
    divergence_with,
    generalised_jsd,
    leave_one_out_demo_mean,
    pick_demonstrations,
    token_divergence,
    topk_tail_divergence,
)
from mitigate.policies import FullScores
from mitigate.policies.chunked import HiddenScores, log_softmax_logits
from mitigate.recipes.reproduce import objective_record


def _dists(seed: int, shape=(3, 4, 7)):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=torch.float64).log_softmax(-1)
    t = (2 * torch.randn(*shape, generator=g, dtype=torch.float64)).log_softmax(-1)
    return s, t


def _kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


# --------------------------------------------------------------------------- 1. divergence direction
@pytest.mark.parametrize("seed", [0, 1])
def test_gjsd_end_points_are_forward_and_reverse_kl(seed):
    s, t = _dists(seed)
    ps, pt = s.exp().numpy(), t.exp().numpy()
    np.testing.assert_allclose(generalised_jsd(s, t, 0.0).numpy(), _kl(pt, ps), rtol=0, atol=1e-6)
    np.testing.assert_allclose(generalised_jsd(s, t, 1.0).numpy(), _kl(ps, pt), rtol=0, atol=1e-6)
    np.testing.assert_allclose(token_divergence(s, t, "gjsd", alpha=0.0).numpy(),
                               token_divergence(s, t, "forward_kl").numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(token_divergence(s, t, "gjsd", alpha=1.0).numpy(),
                               token_divergence(s, t, "reverse_kl").numpy(), rtol=0, atol=1e-6)
    for alpha in (0.1, 0.5, 0.8):  # brute force inside: alpha KL(p_t || m) + (1 - alpha) KL(p_s || m)
        m = alpha * pt + (1 - alpha) * ps
        want = alpha * _kl(pt, m) + (1 - alpha) * _kl(ps, m)
        np.testing.assert_allclose(generalised_jsd(s, t, alpha).numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(generalised_jsd(s, t, 0.5).numpy(), token_divergence(s, t, "jsd").numpy(), atol=1e-6)
    # the documented discontinuity: the formula vanishes toward the end points (~ alpha forward KL)
    small = generalised_jsd(s, t, 1e-6).numpy()
    np.testing.assert_allclose(small / 1e-6, _kl(pt, ps), rtol=1e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generalised_jsd(s, t, 1.5)


def _coarse(logp, ids):
    p = np.exp(logp)
    top = np.take_along_axis(p, ids, -1)
    return np.concatenate([top, np.maximum(1 - top.sum(-1, keepdims=True), 1e-30)], -1)


@pytest.mark.parametrize("kind,alpha", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.5), ("gjsd", 0.3)])
@pytest.mark.parametrize("of", ["teacher", "student"])
def test_topk_with_tail_bucket(kind, alpha, of):
    """k = V: the full divergence (to 1e-10); k < V: the divergence of the (k + 1)-bucket coarsening,
    computed in numpy, and never above the full one (data processing)."""
    s, t = _dists(3)
    full = token_divergence(s, t, kind, alpha)
    np.testing.assert_allclose(topk_tail_divergence(s, t, kind, 7, of, alpha).numpy(), full.numpy(), atol=1e-10)
    np.testing.assert_allclose(divergence_with(s, t, kind, alpha, topk=50, topk_of=of).numpy(), full.numpy(),
                               atol=1e-10)
    for k in (1, 3):
        got = topk_tail_divergence(s, t, kind, k, of, alpha)
        ids = np.argsort(-(t if of == "teacher" else s).numpy(), -1)[..., :k]
        cs, ct = _coarse(s.numpy(), ids), _coarse(t.numpy(), ids)
        want = token_divergence(torch.as_tensor(np.log(cs)), torch.as_tensor(np.log(ct)), kind, alpha)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)
        assert (got <= full + 1e-12).all()


def test_scores_carry_the_options_and_hidden_scores_agree():
    """FullScores and HiddenScores (chunked, autograd per chunk) give the same values and gradients
    for gjsd and both top-k forms; with no options FullScores is the original call, bit for bit."""
    g = torch.Generator().manual_seed(0)
    B, T, H, V = 2, 3, 5, 11
    hs = torch.randn(B, T, H, generator=g, requires_grad=True)
    ht = torch.randn(B, T, H, generator=g)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    keep, tokens = torch.ones(B, T, dtype=torch.bool), torch.randint(V, (B, T), generator=g)
    target_full = FullScores(log_softmax_logits(ht, w.detach()), tokens)
    target_hidden = HiddenScores(ht, keep, tokens, w.detach())
    plain = FullScores(log_softmax_logits(hs, w), tokens)
    assert torch.equal(plain.divergence(target_full, "jsd"),
                       token_divergence(plain.logprobs, target_full.logprobs, "jsd"))
    for opts in ({"alpha": 0.3}, {"alpha": 0.5, "topk": 4, "topk_of": "teacher"},
                 {"alpha": 0.7, "topk": 4, "topk_of": "student"}):
        kind = "gjsd"
        a = FullScores(log_softmax_logits(hs, w), tokens).divergence(target_full, kind, **opts)
        (ga,) = torch.autograd.grad(a.sum(), w)
        b = HiddenScores(hs, keep, tokens, w, chunk_size=2).divergence(target_hidden, kind, **opts)
        (gb,) = torch.autograd.grad(b.sum(), w)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- 2. teacher-base interpolation
def test_interpolated_teacher_end_points_and_normalisation():
    s, t = _dists(4)
    tokens = torch.zeros(3, 4, dtype=torch.long)
    teacher, base = FullScores(s, tokens), FullScores(t, tokens)
    torch.testing.assert_close(interpolated_teacher(teacher, base, 0.0).materialise(), s, rtol=0, atol=1e-12)
    torch.testing.assert_close(interpolated_teacher(teacher, base, 1.0).materialise(), t, rtol=0, atol=1e-12)
    mid = interpolated_teacher(teacher, base, 0.3).materialise()
    want = torch.log_softmax(0.7 * s + 0.3 * t, -1)  # brute force: the renormalised geometric mixture
    torch.testing.assert_close(mid, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(mid.exp().sum(-1), torch.ones(3, 4, dtype=torch.float64), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- 3. demonstration rules
# hand-made groups of 4 (rows 0-3, 4-7, 8-11): three correct with a duplicate, none, one
TOKENS = torch.tensor([[5, 2], [6, 2], [9, 9], [5, 2],
                       [7, 2], [7, 2], [8, 2], [8, 2],
                       [9, 9], [6, 2], [9, 9], [9, 9]])
CORRECT = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
GROUPS = torch.arange(3).repeat_interleave(4)
SEQ = torch.tensor([-1.0, -3.0, -0.5, -1.0, -2, -2, -2, -2, -2, -4.0, -2, -2])  # rows 0 and 3 tie


def _batch(tokens=TOKENS, correct=CORRECT, groups=GROUPS, seq=SEQ, contexts=None):
    n = len(tokens)
    mask = torch.ones(tokens.shape)
    lp = torch.zeros(n, tokens.shape[1], 3)
    old = torch.stack([seq, torch.zeros(n)], 1)
    prompts = [Prompt() for _ in range(int(groups.max()) + 1)]
    return Batch(prompts=prompts, group_index=groups, contexts=contexts or [[99, int(g)] for g in groups.tolist()],
                 tokens=tokens, mask=mask, rewards=correct.float(), correct=correct,
                 labels=torch.full((n,), -1), scores=FullScores(lp, tokens), old_token_logprobs=old,
                 reference=FullScores(lp, tokens))


def test_first_rule():
    d = D.pick_first(GROUPS, CORRECT, 2)
    # the group with none: masked; the sole correct row 9 demonstrates the others, itself masked
    want = [[1, 1], [0, 0], [0, 0], [0, 0]] + [[-1, -1]] * 4 + [[9, 9], [-1, -1], [9, 9], [9, 9]]
    assert d.tolist() == want


def test_least_likely_rule():
    d = D.pick_least_likely(GROUPS, CORRECT, SEQ, 1)[:, 0]
    # others of row 0: rows 1 (-3), 3 (-1) -> 1; of row 1: rows 0, 3 tie at -1 -> the first, 0
    assert d.tolist() == [1, 0, 1, 1] + [-1] * 4 + [9] * 4  # the sole correct row demonstrates itself


def test_distinct_rule_merges_duplicates_before_drawing():
    """Row 2 (incorrect) has the correct rows 0, 1, 3, where 0 and 3 are the same output: uniform
    over rows gives output [5, 2] 2/3 of the time, distinct 1/2 (drawn as its first row, 0)."""
    reps, m = 4000, 1
    d = D.pick_distinct(GROUPS, CORRECT, TOKENS, torch.ones(TOKENS.shape), reps, torch.Generator().manual_seed(0))
    row2 = Counter(d[2].tolist())
    assert set(row2) == {0, 1} and abs(row2[0] / reps - 0.5) < 5 * math.sqrt(0.25 / reps)
    assert set(d[1].tolist()) == {0}                   # rows 0 and 3 merge: one output, drawn as row 0
    assert set(d[0].tolist()) == {1, 3}                # row 0's others: outputs [6, 2] (row 1) and [5, 2] (row 3)
    assert (d[4:8] == -1).all() and (d[8:] == 9).all()
    u = pick_demonstrations(GROUPS, CORRECT, reps, torch.Generator().manual_seed(0))
    assert abs(Counter(u[2].tolist())[0] + Counter(u[2].tolist())[3] - 2 / 3 * reps) < 5 * math.sqrt(2 / 9 * reps)
    assert m == 1


def test_other_prompt_rule():
    d = D.pick_other_prompt(GROUPS, CORRECT, 50, torch.Generator().manual_seed(0))
    assert set(d[:4].flatten().tolist()) == {9}           # group 0: the other prompts' only correct row
    assert set(d[4:8].flatten().tolist()) == {0, 1, 3, 9}
    assert set(d[8:].flatten().tolist()) == {0, 1, 3}
    alone = D.pick_other_prompt(GROUPS, torch.tensor([1] + [0] * 11, dtype=torch.bool), 3,
                                torch.Generator().manual_seed(0))
    assert (alone[:4] == -1).all() and (alone[4:] == 0).all()  # no other prompt has a correct rollout


def test_uniform_rule_makes_the_original_draws():
    teacher = Teacher("base", _StubPolicy(), _StubPolicy())
    ctx = _ctx(teacher, seed=5)
    demos, _ = teacher.demonstrations(_batch(), ctx, 3)
    assert torch.equal(demos, pick_demonstrations(GROUPS, CORRECT, 3, torch.Generator().manual_seed(5)))


class _StubPolicy:
    """Scores any context: log-probs [B, T, 3] that record the context's last token in entry 0."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)

    def scores(self, contexts, tokens, mask):
        lp = torch.zeros(len(contexts), tokens.shape[1], 3)
        lp[:, :, 0] = torch.tensor([float(c[-1]) for c in contexts])[:, None]
        return FullScores(lp, tokens)


class _DemoTask:
    def teacher_context(self, prompt, y_star):
        return [99, *torch.as_tensor(y_star).tolist()]


def _ctx(teacher, seed=0, step=1):
    return Context(task=_DemoTask(), policy=None, reference=None, teacher=teacher,
                   generator=torch.Generator().manual_seed(seed), reference_generator=torch.Generator(),
                   temperature=1.0, batch_size=64, step=step)


def test_buffer_rule_uses_earlier_steps_then_falls_back():
    teacher = Teacher("base", _StubPolicy(), _StubPolicy())
    ctx = _ctx(teacher, seed=1)
    b1 = _batch()
    d1, _ = teacher.demonstrations(b1, ctx, 2, rule="buffer", buffer_size=2)
    # step 1: empty buffer, the uniform rule's draws on the same stream
    assert torch.equal(d1, pick_demonstrations(GROUPS, CORRECT, 2, torch.Generator().manual_seed(1)))
    # another draw in the same step (other m) still sees earlier steps only: none yet
    d1b, _ = teacher.demonstrations(b1, ctx, 1, rule="buffer", buffer_size=2)
    assert (d1b < len(TOKENS)).all() and teacher.buffer.entries == {}
    # step 2: prompts 0 and 2 draw from their buffers (indices >= B), prompt 1 still has none
    ctx.step = 2
    b2 = _batch(correct=torch.zeros(12, dtype=torch.bool))
    d2, (teachers,) = teacher.demonstrations(b2, ctx, 1, rule="buffer", buffer_size=2)
    assert {k: len(v) for k, v in teacher.buffer.entries.items()} == {(99, 0): 2, (99, 2): 1}  # size 2 kept
    n = len(TOKENS)
    assert (d2[:4] >= n).all() and (d2[4:8] == -1).all() and (d2[8:] >= n).all()
    buffered = [tuple(teacher._extra[j - n].tolist()) for j in d2[:4, 0].tolist()]
    assert set(buffered) <= {(6, 2), (5, 2)}  # the last two correct rows of prompt 0: rows 1 and 3
    assert set(teacher._extra[j - n].tolist()[0] for j in d2[8:, 0].tolist()) == {6}
    contexts = teacher.demonstration_contexts(b2, ctx, d2[:, 0])
    assert contexts[0][0] == 99 and tuple(contexts[0][1:]) in {(6, 2), (5, 2)}
    assert teachers.materialise()[8, 0, 0] == 2.0  # the teacher saw the buffered demonstration's last token
    # a fresh teacher first called after step 1 (a resumed run) refuses: its buffer would be empty
    late = Teacher("base", _StubPolicy(), _StubPolicy())
    with pytest.raises(ResumeError, match="buffer"):
        late.demonstrations(b1, _ctx(late, step=7), 1, rule="buffer")


def test_rules_through_the_teacher_and_the_objectives():
    """Each rule runs through `Teacher.demonstrations` and the SDSD-family objectives (a batch whose
    groups hold three, none and one correct rollouts), and every config records its defaults
    quietly (summary.json's objective records keep their earlier keys)."""
    for rule in D.DEMO_RULES:
        teacher = Teacher("base", _StubPolicy(), _StubPolicy())
        ctx = _ctx(teacher)
        demos, (t,) = teacher.demonstrations(_batch(), ctx, 1, rule=rule)
        assert demos.shape == (12, 1) and (demos[4:8] == -1).all() | (rule == "other_prompt")
        assert t.materialise().shape == (12, 2, 3)
    for name in ("sdsd", "sdsd_marginal", "sdsd_anticopy", "sdsd_cmi", "sdsd_interp"):
        entry = OBJECTIVES.get(name)
        cfg = C.build(entry.config, {"name": name})
        record = objective_record(cfg)
        assert "demo_rule" not in record and "jsd_alpha" not in record and "divergence_topk" not in record
        assert objective_record(C.build(entry.config, {"name": name, "demo_rule": "first"}))["demo_rule"] == "first"


def test_leave_one_out_ignores_demonstrations_from_other_groups():
    """sdsd_cmi's baseline: a value computed against another group's row (other_prompt) or an
    outside completion (buffer) is no row's rollout of this group; in-group draws are as before."""
    values = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    groups, include = torch.tensor([0, 0, 1, 1]), torch.ones(4, dtype=torch.bool)
    inside = torch.tensor([[1, 1], [0, 0], [3, 3], [2, 2]])
    outside = torch.tensor([[2, 9], [3, 9], [0, 9], [1, 9]])
    got = leave_one_out_demo_mean(values, outside, groups, include)
    # row 0: other row 1's values (2, 3), none computed against row 0
    assert got.tolist() == [2.5, 0.5, 6.5, 4.5]
    got_in = leave_one_out_demo_mean(values, inside, groups, include)
    assert all(math.isnan(x) for x in got_in.tolist())  # each other row's values all used this row


# --------------------------------------------------------------------------- 4. theory against code
@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Deterministic(Enumeration):
    """Every ORDERED G-tuple of outputs (weight 1 each), no demonstration draws: for the
    deterministic rules (first, least_likely), which depend on the order of the rows, so the
    multisets of `Enumeration` (rows sorted) would not do."""

    def __init__(self, space, G):  # noqa: D107 (the parent's loop without its draws)
        self.space, self.G, self.M, self.demos = space, G, None, None
        outputs, mult = [], []
        for group in itertools.product(range(space.n), repeat=G):
            outputs.append(group)
            mult.append(1.0)
        self.outputs, self.factor = np.array(outputs), np.array(mult)
        self.N, self.B = len(outputs), len(outputs) * G
        self.tokens = torch.as_tensor(space.outputs[self.outputs.reshape(-1)])
        self.group_index = torch.arange(self.N).repeat_interleave(G)
        self.correct = torch.as_tensor(space.correct[self.outputs.reshape(-1)])
        self.prompts = [Prompt() for _ in range(self.N)]
        self.contexts = [Prompt.tokens] * self.B
        self.mask = torch.ones(self.tokens.shape, dtype=torch.float64)


ENUMS = {"G2": Enumeration(SPACE, 2), "G3": Deterministic(SMALL, 3), "G3u": Enumeration(SMALL, 3, M=2),
         "G4": Deterministic(SMALL, 4)}
SETS = {"G2": (SPACE, BASE, 2), "G3": (SMALL, SMALL_BASE, 3), "G3u": (SMALL, SMALL_BASE, 3),
        "G4": (SMALL, SMALL_BASE, 4)}
CASES = [("sdsd_interp", {"lam": 0.3}, "G2"), ("sdsd_interp", {"lam": 0.7}, "G3u"),
         ("sdsd_interp", {"lam": 0.5, "demo_rule": "first"}, "G2"), ("sdsd", {"demo_rule": "first"}, "G2"),
         ("sdsd", {"demo_rule": "first"}, "G3"), ("sdsd", {"demo_rule": "least_likely"}, "G4"),
         ("sdsd_interp", {"lam": 0.4, "demo_rule": "least_likely"}, "G3")]


def _kw(G, teacher="live", **fields):
    return {"beta": BETA, "G": G, "kappa": KAPPA, "teacher": teacher, **fields}


@pytest.mark.parametrize("teacher", ["live", "base"])
@pytest.mark.parametrize("name,fields,setting", CASES, ids=[f"{n}-{f}-{s}" for n, f, s in CASES])
def test_code_gradient_is_the_theory_gradient(name, fields, setting, teacher):
    space, base_logits, G = SETS[setting]
    h = Harness(name, ENUMS[setting], base_logits, teacher=teacher, **fields)
    rng = np.random.default_rng(11)
    for _ in range(2):
        logits = base_logits + 0.6 * rng.standard_normal(base_logits.shape)
        h.set_logits(logits)
        expected = th.expected_gradient(name, space, logits, base_logits, **_kw(G, teacher, **fields))
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(h.gradient(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name,fields,setting", CASES, ids=[f"{n}-{f}-{s}" for n, f, s in CASES])
def test_code_is_stationary_at_the_predicted_fixed_point(name, fields, setting):
    space, base_logits, G = SETS[setting]
    pred = th.tabular_fixed_point(name, space, base_logits, **_kw(G, **fields))
    h = Harness(name, ENUMS[setting], base_logits, **fields)
    assert np.abs(h.gradient()).max() > 1e-3
    h.set_logits(pred)
    assert np.abs(h.gradient()).max() < 1e-9


def test_least_likely_and_distinct_weaken_the_tilt():
    """Groups of 4 on the SMALL space (the base's top share among correct outputs 0.48): uniform
    SDSD's fixed point puts 0.82 of the correct mass on the top output, distinct 0.79, least_likely
    0.59 (it
    demonstrates the rarest of the others). With groups of 3 least_likely's field has no smooth
    zero on the branch from the base (it lies at a kink where two outputs tie in likelihood), which
    `tabular_fixed_point` reports as no fixed point."""
    p0 = SMALL.probs(SMALL_BASE)

    def gain(rule, G=4):
        return share_gain(SMALL, SMALL.probs(th.tabular_fixed_point("sdsd", SMALL, SMALL_BASE,
                                                                    **_kw(G, demo_rule=rule))), p0)

    uniform, distinct, least = gain("uniform"), gain("distinct"), gain("least_likely")
    assert uniform > distinct + 0.01 and distinct > least + 0.2 and least > 0
    with pytest.raises(RuntimeError, match="no fixed point"):
        gain("least_likely", G=3)


def test_interpolation_fixed_points_between_sdsd_and_the_base():
    """lam 0 is SDSD's fixed point (1e-9); the top correct output's share gain shrinks monotonically
    in lam and vanishes at lam 1 (the teacher is the base: only the anchor's fixed point, the base)."""
    p0 = SPACE.probs(BASE)

    def fixed(name, **f):
        return SPACE.probs(th.tabular_fixed_point(name, SPACE, BASE, **_kw(2, **f)))

    sdsd = fixed("sdsd")
    assert np.abs(fixed("sdsd_interp", lam=0.0) - sdsd).max() < 1e-9
    gains = [share_gain(SPACE, fixed("sdsd_interp", lam=lam), p0) for lam in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert gains[0] > 0.5 and all(a > b for a, b in zip(gains, gains[1:])) and abs(gains[-1]) < 1e-6
    assert np.abs(fixed("sdsd_interp", lam=1.0) - p0).max() < 1e-9


@pytest.mark.parametrize("rule", ["distinct", "least_likely"])
def test_rule_laws_match_the_theory(rule):
    """For one row of a group of 4 whose 3 other rows are iid draws from pi (the SMALL space's 4
    outputs), the code's demonstration law over (k >= 1) equals `theory._demo_law` within 5
    standard errors, and it differs from the uniform law (the rule changes something)."""
    rng, reps, G = np.random.default_rng(0), 6000, 4
    pi = SMALL.probs(SMALL_BASE + 0.3)
    C_ = SMALL.correct
    rows = rng.choice(SMALL.n, size=(reps, G), p=pi)
    rows[:, 0] = np.flatnonzero(~C_)[0]  # row 0 incorrect: its demonstration comes from the others
    groups = torch.arange(reps).repeat_interleave(G)
    flat = torch.as_tensor(rows.reshape(-1))
    correct = torch.as_tensor(C_[flat.numpy()])
    tokens = torch.as_tensor(SMALL.outputs[flat.numpy()])
    if rule == "distinct":
        d = D.pick_distinct(groups, correct, tokens, torch.ones(tokens.shape), 1, torch.Generator().manual_seed(0))
    else:
        seq = torch.as_tensor(np.log(pi)[flat.numpy()])
        d = D.pick_least_likely(groups, correct, seq, 1)
    picked = d.view(reps, G)[:, 0]
    outputs = np.where(picked >= 0, flat.numpy()[picked.clamp(min=0).numpy()], -1)
    c = float(pi[C_].sum())
    pk = th.binom.pmf(np.arange(G), G - 1, c)
    law = th._demo_law(rule, np.where(C_, pi, 0) / c, pi, pk, C_)
    for z in range(SMALL.n):
        f = float((outputs == z).mean())
        assert abs(f - law[z]) < 5 * math.sqrt(max(law[z] * (1 - law[z]), 1e-4) / reps)
    assert np.abs(law - th._demo_law("uniform", np.where(C_, pi, 0) / c, pi, pk, C_)).max() > 0.01


def test_paper_preset_defines_the_rows():
    """paper.yaml names each SDSD-side row under reproduce.method_configs (not in `methods`: the
    main job's wall time), each resolving to a valid config; the frozen base teacher is its own row."""
    from mitigate.recipes.reproduce import method_config

    cfg = C.load(preset="paper")
    rows = {"sdsd_base_teacher", "sdsd_first", "sdsd_distinct", "sdsd_least_likely", "sdsd_buffer",
            "sdsd_other_prompt", "sdsd_forward_kl", "sdsd_jsd", "sdsd_forward_kl_top20", "sdsd_interp"}
    assert rows <= set(cfg.reproduce.method_configs) and not rows & set(cfg.reproduce.methods)
    objectives = {m: method_config(cfg, m).train.objective for m in rows}
    assert objectives["sdsd_base_teacher"].teacher == "base" and objectives["sdsd_base_teacher"].name == "sdsd"
    others = set(D.DEMO_RULES) - {"uniform"}
    assert {objectives[f"sdsd_{r}"].demo_rule for r in others} == others
    assert objectives["sdsd_interp"].name == "sdsd_interp" and objectives["sdsd_forward_kl_top20"].divergence_topk == 20


def test_rows_train_end_to_end(smoke_base, tmp_path):
    """Each new rule, divergence option and sdsd_interp runs two smoke steps through the real loop
    (graph task, tiny_gpt) with a finite loss (whether buffer's step 2 meets a prompt of step 1 depends
    on the prompt order; its buffered draws are tested on hand-made batches above)."""
    import json

    from mitigate.recipes.train import train

    rows = [("sdsd", {"demo_rule": r}) for r in D.DEMO_RULES if r != "uniform"]
    rows += [("sdsd", {"divergence": "gjsd", "jsd_alpha": 0.3, "divergence_topk": 5}),
             ("sdsd", {"divergence": "forward_kl", "divergence_topk": 5, "topk_of": "student"}),
             ("sdsd_interp", {"lam": 0.5}), ("sdsd_cmi", {"M": 2, "demo_rule": "other_prompt"}),
             ("sdsd_marginal", {"M": 2, "demo_rule": "distinct"}), ("sdsd", {"teacher": "base"})]
    for i, (name, fields) in enumerate(rows):
        objective = json.dumps({"name": name, **fields})
        cfg = C.load(preset="smoke", overrides=["train.steps=2", f"train.objective={objective}"])
        run = train(cfg, smoke_base, tmp_path / f"row{i}", quiet=True)
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 2 and np.isfinite(last["loss"]), (name, fields)


def test_geometric_target_of_hidden_scores_matches_the_full_tensors():
    """sdsd_interp's teacher for a policy with `HiddenScores` (the hf policy): softmax((1 - lam) log
    p_teacher + lam log p_base) with two different projections, per chunk, equals the `FullScores`
    form: divergences (gjsd and top-k included) and their gradients, token log-probs, entropies."""
    from mitigate.policies.base import geometric_mixture

    g = torch.Generator().manual_seed(1)
    B, T, H, V = 2, 4, 5, 9
    hs = torch.randn(B, T, H, generator=g, requires_grad=True)
    ht, hr = torch.randn(B, T, H, generator=g), torch.randn(B, T, H, generator=g)
    w, wt, wr = (torch.randn(V, H, generator=g) for _ in range(3))
    w.requires_grad_(True)
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    tokens = torch.randint(V, (B, T), generator=g)
    full = geometric_mixture([FullScores(log_softmax_logits(ht, wt), tokens), FullScores(log_softmax_logits(hr, wr),
                                                                                         tokens)], [0.6, 0.4])
    hidden = geometric_mixture([HiddenScores(ht, keep, tokens, wt, chunk_size=3),
                                HiddenScores(hr, keep, tokens, wr, chunk_size=3)], [0.6, 0.4])
    torch.testing.assert_close(hidden.materialise(), full.materialise(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.token_logprobs(), full.token_logprobs() * keep, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.entropy(), full.entropy() * keep, rtol=1e-5, atol=1e-6)
    for kind, opts in (("reverse_kl", {}), ("forward_kl", {"topk": 3}), ("gjsd", {"alpha": 0.2, "topk": 4,
                                                                                  "topk_of": "student"})):
        a = FullScores(log_softmax_logits(hs, w), tokens).divergence(full, kind, **opts) * keep
        (ga,) = torch.autograd.grad(a.sum(), w)
        b = HiddenScores(hs, keep, tokens, w, chunk_size=3).divergence(hidden, kind, **opts)
        (gb,) = torch.autograd.grad(b.sum(), w)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)
