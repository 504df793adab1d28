"""Mitigations: composition by registration, the estimators' defining properties, config errors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mitigate import config as C
from mitigate.core.fields import Section, opt
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives.base import make_term
from mitigate.ops import aggregate
from mitigate.policies import FullScores, load_policy
from mitigate.recipes.train import train
from mitigate.regularizers import REGULARIZERS, register_regularizer
from mitigate.regularizers.ot import sinkhorn_potentials
from mitigate.tasks import make_task
from mitigate.tasks.graph import EOS


# --------------------------------------------------------------------------- a toy regularizer
@dataclass
class ShortPathsConfig(Section):
    name: str = "test_short_paths"
    coef: float = opt(1.0, "weight", min=0.0)


@register_regularizer("test_short_paths", ShortPathsConfig)
def short_paths(batch: Batch, ctx: Context, cfg: ShortPathsConfig):
    """Raise the log-probability of the group's rollouts in proportion to their shortness."""
    length = batch.mask.sum(1)
    loss = aggregate(length[:, None] * batch.token_logprobs(), batch.mask, "token_mean")
    return loss, {"mean_length": float(length.mean())}


@pytest.fixture(scope="module")
def base(smoke_base):
    return smoke_base  # the session's smoke base run folder (read-only)


def _weights(run):
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_toy_regularizer_registered_from_test_file_trains_two_steps(base, tmp_path):
    cfg = C.load(preset="smoke", overrides=["train.steps=2", "train.lr=1e-2",
                                            "train.regularizers=[{name: test_short_paths, coef: 5.0}]"])
    assert cfg.train.regularizers[0].coef == 5.0
    run = train(cfg, base, tmp_path / "toy", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("test_short_paths/mean_length" in r for r in rows[1:])
    plain = train(C.load(preset="smoke", overrides=["train.steps=2", "train.lr=1e-2"]), base,
                  tmp_path / "plain", quiet=True)
    a, b = _weights(run), _weights(plain)
    assert any(not torch.equal(a[k], b[k]) for k in a), "the regularizer had no effect on the weights"


@pytest.mark.parametrize("objective,regs", [
    ("sdsd_marginal", []), ("sdsd_cmi", []), ("sdsd_anticopy", []),
    ("sdsd", [{"name": "entropy", "coef": 0.01, "base_kl": 0.1}]), ("sdsd", [{"name": "ot", "coef": 0.5}]),
    ("sdsd", [{"name": "ot", "coef": 0.5, "replay": 1.0}]),
])
def test_builtin_mitigations_train_and_log(base, tmp_path, objective, regs):
    reg = "[" + ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in r.items()) + "}" for r in regs) + "]"
    cfg = C.load(preset="smoke", overrides=["train.steps=2", f"train.objective.name={objective}",
                                            f"train.regularizers={reg}"])
    run = train(cfg, base, tmp_path / "run", quiet=True)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(last["loss"])
    for r in regs:
        assert f"{r['name']}/loss" in last
        if r.get("replay"):
            assert last["ot/replay_paths"] > 0  # reference paths were scored by the student


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("override,needle", [
    ("train.regularizers=[{name: entrpy, coef: 0.1}]", "did you mean 'entropy'"),
    ("train.regularizers=[{name: entropy, coef: -0.1}]", "must be >= 0"),
    ("train.regularizers=[{name: ot, coef: 0.1, reg: 0}]", "must be >= 0.0001"),
    ("train.objective={name: sdsd_marginal, M: 0}", "'train.objective.M' must be >= 1"),
    ("train.objective={name: sdsd_cmi, M: 0}", "'train.objective.M' must be >= 1"),
    ("train.objective={name: sdsd_cmi, coef: -1}", "'train.objective.coef' must be >= 0"),
    ("train.objective={name: sdsd_cmi, coef: 3}", "'train.objective.coef' must be <= 1"),
    ("train.objective={name: sdsd_cmi, coef: 3}", "now `sdsd_anticopy`"),
    ("train.objective={name: sdsd_cmi, divergence: jsd}", "unknown config key 'train.objective.divergence'"),
    ("train.objective={name: sdsd_anticopy, coef: -1}", "'train.objective.coef' must be >= 0"),
])
def test_bad_mitigation_config_names_the_problem(override, needle):
    with pytest.raises(C.ConfigError) as err:
        C.load(preset="smoke", overrides=[override])
    assert needle in str(err.value)


def test_unknown_objective_lists_registered():
    # other test modules (docs snippets, plugins) may register more objectives in this process:
    # the message lists every registered name, the built-ins among them
    with pytest.raises(C.ConfigError) as err:
        C.load(preset="smoke", overrides=["train.objective.name=sdsd_marginl"])
    names = OBJECTIVES.names()
    assert {"grpo", "sdsd", "sdsd_cmi", "sdsd_anticopy", "sdsd_marginal"} <= set(names)
    assert "did you mean 'sdsd_marginal'" in str(err.value)
    assert "registered: " + ", ".join(names) in str(err.value)


def test_unknown_regularizer_lists_registered():
    with pytest.raises(C.ConfigError) as err:
        C.load(preset="smoke", overrides=["train.regularizers=[{name: nope}]"])
    assert "registered:" in str(err.value) and "entropy" in str(err.value) and "ot" in str(err.value)


# --------------------------------------------------------------------------- estimator properties
@pytest.fixture(scope="module")
def batch_parts(base):
    """Everything but the student log-probs of one training batch of the smoke base model."""
    cfg = C.load(preset="smoke")
    task = make_task(cfg.task)
    policy, _ = load_policy(base)
    prompts = task.prompts("id_train")[:4]
    G = 6
    contexts = [q.tokens for q in prompts for _ in range(G)]
    s = policy.sample(contexts, task.max_new_tokens, 1.0, torch.Generator().manual_seed(0))
    correct, labels = task.verify([q for q in prompts for _ in range(G)], s.tokens.numpy())
    mask = s.mask.float()
    return dict(policy=policy, task=task, prompts=prompts, contexts=contexts, tokens=s.tokens, mask=mask,
                correct=torch.as_tensor(correct), labels=torch.as_tensor(labels), G=G)


def make_batch(p, seed=0) -> tuple[Batch, Context]:
    """One step's batch and a fresh context (live teacher = the policy itself, demonstration
    draws from a generator seeded with `seed`)."""
    policy, tokens, mask = p["policy"], p["tokens"], p["mask"]
    scores = policy.scores(p["contexts"], tokens, mask)  # tiny_gpt: FullScores, b.logprobs is their tensor
    batch = Batch(prompts=p["prompts"], group_index=torch.arange(len(p["prompts"])).repeat_interleave(p["G"]),
                  contexts=p["contexts"], tokens=tokens, mask=mask, rewards=p["correct"].float(),
                  correct=p["correct"], labels=p["labels"], scores=scores,
                  old_token_logprobs=scores.token_logprobs().detach(),
                  reference=FullScores(scores.logprobs.detach(), tokens))
    ctx = Context(task=p["task"], policy=policy, reference=policy, teacher=Teacher("live", policy, policy),
                  generator=torch.Generator().manual_seed(seed),
                  reference_generator=torch.Generator().manual_seed(seed), temperature=1.0, batch_size=4096,
                  step=1)
    return batch, ctx


def _objective(name, **fields):
    entry = OBJECTIVES.get(name)
    return make_term(entry), C.build(entry.config, {"name": name, **fields})


def test_marginal_with_one_demonstration_is_sdsd(batch_parts):
    assert batch_parts["correct"].any()
    fn, cfg = _objective("sdsd")
    loss_sdsd, _ = fn(*make_batch(batch_parts), cfg)
    fn, cfg = _objective("sdsd_marginal", M=1)
    loss_marg, _ = fn(*make_batch(batch_parts), cfg)
    torch.testing.assert_close(loss_marg, loss_sdsd, rtol=1e-5, atol=1e-6)


def test_anticopy_without_its_reward_is_sdsd_and_with_it_differs(batch_parts):
    fn, cfg = _objective("sdsd")
    loss_sdsd, _ = fn(*make_batch(batch_parts), cfg)
    fn, cfg = _objective("sdsd_anticopy", M=1, coef=0.0)
    torch.testing.assert_close(fn(*make_batch(batch_parts), cfg)[0], loss_sdsd, rtol=1e-5, atol=1e-6)
    b, ctx = make_batch(batch_parts)
    loss, scalars = fn(b, ctx, _objective("sdsd_anticopy", M=1, coef=3.0)[1])
    assert scalars["pcmi_spread_correct"] > 0
    b0, ctx0 = make_batch(batch_parts)
    assert not torch.allclose(torch.autograd.grad(loss, b.logprobs)[0],
                              torch.autograd.grad(fn(b0, ctx0, cfg)[0], b0.logprobs)[0])


def test_cmi_correction_gives_correct_rollouts_no_tilt_signal(batch_parts):
    """coef = 1: a correct rollout's gradient is exactly zero whatever it resembles; incorrect
    rollouts keep the teacher's signal. coef = 0 (sequence-level SDSD) moves correct rollouts too."""
    correct = batch_parts["correct"]
    assert correct.any() and (~correct).any()
    grads = {}
    for coef in (0.0, 1.0):
        b, ctx = make_batch(batch_parts)
        fn, cfg = _objective("sdsd_cmi", M=2, coef=coef)
        loss, scalars = fn(b, ctx, cfg)
        grads[coef] = torch.autograd.grad(loss, b.logprobs)[0].abs().sum((1, 2))
    has_demo_groups = correct.view(-1, batch_parts["G"]).any(1).repeat_interleave(batch_parts["G"])
    assert grads[1.0][correct].max() == 0
    assert grads[1.0][~correct & has_demo_groups].min() > 0
    assert grads[0.0][correct].max() > 0


@pytest.mark.parametrize("name,coef", [("sdsd_cmi", 0.5), ("sdsd_cmi", 1.0), ("sdsd_anticopy", 3.0)])
def test_pcmi_advantages_match_a_brute_force_computation(batch_parts, name, coef):
    """The per-rollout weight of grad log pi in sdsd_cmi / sdsd_anticopy, read off the gradient,
    equals the documented estimator computed row by row: pcmi against each demonstration, and for
    a correct rollout a baseline from the OTHER correct rollouts' pcmi against demonstrations
    other than itself (0 if none; no signal if it is its group's only correct rollout)."""
    b, ctx = make_batch(batch_parts)
    fn, cfg = _objective(name, M=2, coef=coef, aggregation="seq_sum")
    loss, _ = fn(b, ctx, cfg)
    demos, teachers = ctx.teacher.demonstrations(b, ctx, 2)  # the draws the objective used (cached)
    grad = torch.autograd.grad(loss, b.logprobs)[0]
    B, G = len(b.tokens), batch_parts["G"]
    student = b.token_logprobs().detach()
    pcmi = [[float(((t.token_logprobs()[i] - student[i]) * b.mask[i]).sum()) for t in teachers]
            for i in range(B)]
    expected = []
    for i in range(B):
        if demos[i, 0] < 0:
            expected.append(0.0)
            continue
        mates = [j for j in range(B) if j // G == i // G and j != i and b.correct[j]]
        level = [pcmi[j][m] for j in mates for m in range(2) if demos[j, m] != i]
        centred = np.mean(pcmi[i]) - (np.mean(level) if level else 0.0)
        if not b.correct[i]:
            a = centred if name == "sdsd_cmi" else 0.0
        elif not mates:
            a = 0.0
        else:
            a = (1 - coef) * centred if name == "sdsd_cmi" else -coef * centred
        expected.append(a)
    # d loss / d log pi(y_t) on the sampled token = -A / B (seq_sum); anticopy adds its divergence
    # term, whose gradient is removed by comparing with plain sdsd's
    tok_grad = (grad.gather(-1, b.tokens.unsqueeze(-1))[..., 0] * b.mask)
    if name == "sdsd_anticopy":
        b2, ctx2 = make_batch(batch_parts)
        plain = _objective("sdsd_anticopy", M=2, coef=0.0, aggregation="seq_sum")[1]
        g0 = torch.autograd.grad(fn(b2, ctx2, plain)[0], b2.logprobs)[0]
        tok_grad = tok_grad - g0.gather(-1, b.tokens.unsqueeze(-1))[..., 0] * b.mask
    got = -tok_grad.sum(1) / b.mask.sum(1) * B
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 0.1


def test_entropy_bonus_is_minus_mean_entropy_and_its_step_raises_entropy():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    mask = torch.ones(3, 4)
    mask[0, 2:] = 0
    entry = REGULARIZERS.get("entropy")
    fn, cfg = make_term(entry), C.build(entry.config, {})

    def as_batch(lp):
        return Batch(prompts=[0], group_index=torch.zeros(3, dtype=torch.long), contexts=[],
                     tokens=torch.zeros(3, 4, dtype=torch.long), mask=mask, rewards=torch.zeros(3),
                     correct=torch.zeros(3, dtype=torch.bool), labels=torch.full((3,), -1),
                     scores=FullScores(lp, torch.zeros(3, 4, dtype=torch.long)), old_token_logprobs=torch.zeros(3, 4),
                     reference=FullScores(lp.detach(), torch.zeros(3, 4, dtype=torch.long)))

    lp = logits.log_softmax(-1)
    loss, _ = fn(as_batch(lp), None, cfg)  # the entropy term reads the batch only
    p = lp.detach().exp()
    ent = -(p * p.log()).sum(-1)
    torch.testing.assert_close(loss.detach(), -(ent * mask).sum() / mask.sum())
    loss.backward()
    with torch.no_grad():
        lp2 = (logits - 0.5 * logits.grad).log_softmax(-1)
        ent2 = -(lp2.exp() * lp2).sum(-1)
    assert (ent2 * mask).sum() > (ent * mask).sum()


def test_ot_penalty_pushes_out_of_the_over_covered_concept():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    reference = torch.stack([a] * 8 + [b] * 8).double()[None] / 2**0.5
    uniform8, uniform16 = torch.full((1, 8), 1 / 8).double(), torch.full((1, 16), 1 / 16).double()

    def penalty(group):
        f_roll, f_ref = sinkhorn_potentials(torch.stack(group).double()[None] / 2**0.5, uniform8, reference,
                                            uniform16, reg=0.05)
        return (f_roll - f_ref.mean(1, keepdim=True))[0]

    mixed = penalty([a] * 7 + [b])
    assert mixed[0] > 0 > mixed[7]  # the over-covered concept is penalised, the rare one rewarded
    assert mixed[0] - mixed[7] <= 1.0 + 1e-6  # a potential difference is bounded by the cost between them
    collapsed = penalty([a] * 8)
    assert (collapsed > 0.1).all()  # a collapsed group is still pushed (a group-mean baseline would be 0)
    assert penalty([a] * 4 + [b] * 4).abs().max() < 1e-3  # matching the reference: no push


def test_rollout_features_separate_concepts_and_routes():
    task = make_task(C.load(preset="smoke").task)
    q = next(q for q in task.prompts("id_train") if len(task.feasible_concepts(q.start, q.goal)) >= 2)
    table = task.path_table(q.start, q.goal)
    eos = np.full((len(table.paths), 1), EOS)
    feats = task.rollout_features(np.hstack([table.paths, eos]), table.concepts, 0.5)
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    same_concept = table.concepts[:, None] == table.concepts[None]
    assert d[~same_concept].min() > d[same_concept].max() - 1e-9
    assert d.max() <= 1.0 + 1e-9


def test_teacher_columns_from_one_forward_equal_one_forward_per_column(batch_parts, monkeypatch):
    """M demonstration columns are scored in one forward over M x B rows and split (`Scores.rows`);
    each column's scores equal a forward of that column alone."""
    from mitigate.policies import tiny_gpt

    b, ctx = make_batch(batch_parts)
    calls, forward = [], tiny_gpt.continuation_logprobs

    def counted(model, contexts, *args):
        calls.append(len(contexts))
        return forward(model, contexts, *args)

    monkeypatch.setattr(tiny_gpt, "continuation_logprobs", counted)
    demos, columns = ctx.teacher.demonstrations(b, ctx, 3)
    assert calls == [3 * len(b.tokens)]
    assert (demos[:, 0] != demos[:, 1]).any()  # the columns differ, so a wrong split would show
    for k, column in enumerate(columns):
        alone = ctx.teacher.scores(ctx.teacher.demonstration_contexts(b, ctx, demos[:, k]), b.tokens, b.mask)
        assert torch.equal(column.materialise(), alone.materialise())
