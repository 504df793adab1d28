"""Objectives see `Scores`, never [B, T, V] (issue 14): the `hf` policy's `HiddenScores` (last hidden
states, chunked) give the same values and gradients as the full-tensor path for every quantity the
objectives, the KL anchor and the regularizers read, and a training step of the sciqa-smoke
config runs with the [B, T, V] paths (`HFPolicy.logprobs`, `Scores.materialise`) switched off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mitigate import config as C
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives.base import make_term
from mitigate.ops import DIVERGENCES, aggregate, gather_tokens, log_mixture, reverse_kl_anchor, token_divergence
from mitigate.policies import FullScores, mixture, scores_of, target_scores
from mitigate.policies.chunked import HiddenScores
from mitigate.policies.hf import HFConfig, HFPolicy, tiny_folder
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.train import train
from mitigate.regularizers import REGULARIZERS
from mitigate.tasks.sciqa import SciQATask

G = 3
CORRECT = [True, False, True, False, True, False]  # group 0: two correct rollouts; group 1: a sole correct one


class FullTensorOnly:
    """The policy as objectives used it before `Scores`: only the [B, T, V] `logprobs` (`scores_of`
    wraps them in `FullScores`), so a loss through it is the old full-tensor computation."""

    def __init__(self, policy):
        self.inner, self.model = policy, policy.model

    def logprobs(self, contexts, tokens, mask):
        return self.inner.logprobs(contexts, tokens, mask)


class Prompt:
    def __init__(self, tokens):
        self.tokens = tokens


class DemoTask:
    """Teacher context: a demonstration's tokens (up to its padding) before the prompt."""

    def __init__(self, pad: int, marker: list[int]):
        self.pad, self.marker = pad, marker

    def teacher_context(self, prompt, demonstration):
        return self.marker + [int(t) for t in demonstration.tolist() if t != self.pad] + prompt.tokens


@pytest.fixture(scope="module")
def policy():
    folder = tiny_folder("tiny:qwen3")
    return HFPolicy.from_folder(folder, HFConfig(path=str(folder), divergence_chunk=7))  # several chunks


@pytest.fixture(scope="module")
def rollouts(policy):
    encode = lambda text: policy.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [Prompt(encode("Which organelle makes ATP? Answer:")), Prompt(encode("Water boils at"))]
    contexts = [q.tokens for q in prompts for _ in range(G)]
    s = policy.sample(contexts, 9, 1.0, torch.Generator().manual_seed(3))
    assert s.mask.sum(1).min() < s.mask.sum(1).max(), "rollouts of different lengths (padding is exercised)"
    return dict(prompts=prompts, contexts=contexts, tokens=s.tokens, mask=s.mask.float(),
                task=DemoTask(policy.pad_id, encode("Example:")))


def step_inputs(student, reference, r, teacher: str = "live") -> tuple[Batch, Context]:
    tokens, mask = r["tokens"], r["mask"]
    correct = torch.tensor(CORRECT)
    with torch.no_grad():
        old = scores_of(student, r["contexts"], tokens, mask).token_logprobs()
        ref = scores_of(reference, r["contexts"], tokens, mask)
    batch = Batch(prompts=r["prompts"], group_index=torch.arange(2).repeat_interleave(G), contexts=r["contexts"],
                  tokens=tokens, mask=mask, rewards=correct.float(), correct=correct,
                  labels=torch.where(correct, 0, -1), scores=scores_of(student, r["contexts"], tokens, mask),
                  old_token_logprobs=old, reference=ref)
    ctx = Context(task=r["task"], policy=student, reference=reference, teacher=Teacher(teacher, student, reference),
                  generator=torch.Generator().manual_seed(0), reference_generator=torch.Generator().manual_seed(0),
                  temperature=1.0, batch_size=64, step=1)
    return batch, ctx


def step_loss(name: str, fields: dict, batch: Batch, ctx: Context) -> torch.Tensor:
    """objective + the shared reverse-KL anchor + the entropy regularizer with its base-KL leash,
    as `recipes.train` adds them."""
    entry = OBJECTIVES.get(name)
    loss, _ = make_term(entry)(batch, ctx, C.build(entry.config, {"name": name, **fields}))
    anchor, _ = reverse_kl_anchor(batch.divergence(batch.reference, "reverse_kl"), batch.token_logprobs(), batch.mask)
    entropy = REGULARIZERS.get("entropy")
    bonus, _ = make_term(entropy)(batch, ctx, C.build(entropy.config, {"name": "entropy", "base_kl": 0.3}))
    return loss + 0.1 * aggregate(anchor, batch.mask, "token_mean") + 0.05 * bonus


@pytest.mark.parametrize("name,fields,teacher", [
    ("grpo", {}, "live"),
    ("sdsd", {}, "live"),
    ("sdsd", {"divergence": "forward_kl"}, "base"),
    ("sdsd", {"divergence": "jsd", "aggregation": "seq_mean"}, "live"),
    ("sdsd", {"estimator": "sampled_token"}, "live"),
    ("sdsd_marginal", {"M": 3}, "live"),
    ("sdsd_cmi", {"M": 2, "coef": 0.5}, "live"),
    ("sdsd_anticopy", {"M": 2}, "base"),
])
def test_hf_losses_and_gradients_equal_the_full_tensor_computation(policy, rollouts, name, fields, teacher):
    """Through `HiddenScores` (chunked, no [B, T, V]) and through the old full-tensor path (the same
    model's [B, T, V] log-probs, `FullScores`): the same loss and the same gradient of every
    parameter, fp32, to 1e-5. Same demonstration draws (the teacher's stream is seeded alike)."""
    reference = policy.frozen_copy()
    params = list(policy.model.parameters())
    new = step_loss(name, fields, *step_inputs(policy, reference, rollouts, teacher))
    g_new = torch.autograd.grad(new, params)
    old = step_loss(name, fields, *step_inputs(FullTensorOnly(policy), FullTensorOnly(reference), rollouts, teacher))
    g_old = torch.autograd.grad(old, params)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    assert float(old.detach().abs()) > 1e-3
    for a, e in zip(g_new, g_old):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert sum(float(g.abs().sum()) for g in g_old) > 1e-3


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_hidden_scores_equal_full_scores(policy, rollouts, kind):
    """Each `Scores` quantity [B, T] on the masked positions, values and gradients: token log-probs,
    divergence to a teacher and to a mixture of teachers, entropy."""
    contexts, tokens, mask, task = rollouts["contexts"], rollouts["tokens"], rollouts["mask"], rollouts["task"]
    demo_of = [tokens[(i + 1) % len(tokens)] for i in range(len(contexts))]
    teacher_contexts = [[task.teacher_context(Prompt(c), d) for c, d in zip(contexts, demo_of)],
                        [task.marker + c for c in contexts]]
    params = list(policy.model.parameters())

    def quantities(s, targets):
        log_w = torch.log_softmax(torch.randn(2, *tokens.shape, generator=torch.Generator().manual_seed(5)), 0)
        return [s.token_logprobs(), s.entropy(), s.divergence(targets[0], kind),
                s.divergence(mixture(targets, log_w), kind)]

    hidden = quantities(policy.scores(contexts, tokens, mask),
                        [target_scores(policy, c, tokens, mask) for c in teacher_contexts])
    assert isinstance(policy.scores(contexts, tokens, mask), HiddenScores)
    full = quantities(FullScores(policy.logprobs(contexts, tokens, mask), tokens),
                      [FullScores(policy.logprobs(c, tokens, mask).detach(), tokens) for c in teacher_contexts])
    for h, f in zip(hidden, full):
        torch.testing.assert_close(h, f * mask, rtol=1e-5, atol=1e-6)
        weights = torch.linspace(0.5, 2.0, h.numel()).view_as(h) * mask
        for a, e in zip(torch.autograd.grad((h * weights).sum(), params, retain_graph=True),
                        torch.autograd.grad((f * weights).sum(), params, retain_graph=True)):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_a_target_keeps_the_weights_it_was_made_with(policy, rollouts):
    """A live teacher's targets are cached for the step: an optimizer step after them must not move
    them (the trainable projection is copied, once for all targets made before it changes)."""
    contexts, tokens, mask = rollouts["contexts"], rollouts["tokens"], rollouts["mask"]
    twin = HFPolicy(policy.frozen_copy().model.requires_grad_(True), policy.tokenizer, policy.cfg, policy.eos_ids)
    a, b = (target_scores(twin, contexts, tokens, mask) for _ in range(2))
    assert a.weight is b.weight and a.weight is not twin.output_projection()[0]
    before = a.token_logprobs().clone()
    with torch.no_grad():
        twin.output_projection()[0].mul_(1.5)  # what an optimizer step does: in place
    torch.testing.assert_close(a.token_logprobs(), before, rtol=0, atol=0)
    c = target_scores(twin, contexts, tokens, mask)
    assert c.weight is not a.weight and not torch.allclose(c.token_logprobs(), before)
    frozen = target_scores(policy.frozen_copy(), contexts, tokens, mask)
    assert not frozen.weight.requires_grad  # a frozen reference is never copied


def test_full_scores_and_the_mixture_ops_are_the_plain_tensor_math():
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(2, 3, 5, generator=g), -1)
    teachers = torch.log_softmax(torch.randn(2, 2, 3, 5, generator=g), -1)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    s = FullScores(lp, tokens)
    torch.testing.assert_close(s.token_logprobs(), gather_tokens(lp, tokens))
    torch.testing.assert_close(s.divergence(FullScores(teachers[0], tokens), "jsd"),
                               token_divergence(lp, teachers[0], "jsd"))
    torch.testing.assert_close(s.entropy(), -(lp.exp() * lp).sum(-1))
    log_w = torch.log_softmax(torch.randn(2, 2, 3, generator=g), 0)
    mix = mixture([FullScores(t, tokens) for t in teachers], log_w)
    torch.testing.assert_close(mix.materialise(), log_mixture(log_w, teachers))
    torch.testing.assert_close(mix.materialise().exp(), (log_w.exp()[..., None] * teachers.exp()).sum(0))


# ----------------------------------------------------------------------------- a training step, no [B, T, V]

def no_vocabulary_tensor(*args, **kwargs):
    raise AssertionError("a [B, T, V] tensor was requested during training")


@pytest.fixture(scope="module")
def sciqa_base(tmp_path_factory):
    cfg = C.load(preset="sciqa-smoke", overrides=["pretrain.steps=0"])
    return pretrain(cfg, tmp_path_factory.mktemp("sciqa") / "base", quiet=True)


@pytest.mark.parametrize("objective,extra", [
    ("grpo", ["train.kl_estimator=k3"]),
    ("sdsd", ["train.inner_epochs=2", "train.regularizers=[{name: entropy, coef: 0.01, base_kl: 0.1}]"]),
    ("sdsd_marginal", ["train.regularizers=[{name: ot, coef: 0.5, replay: 1.0, reference_samples: 4}]"]),
    ("sdsd_cmi", ["train.regularizers=[{name: replay, coef: 0.3, reference_samples: 4}]"]),
    ("sdsd_anticopy", []),
])
def test_an_hf_training_step_never_builds_the_vocabulary_tensor(sciqa_base, tmp_path, monkeypatch, objective, extra):
    """One step of the sciqa-smoke config (tiny Qwen3) with `HFPolicy.logprobs` and
    `HiddenScores.materialise` raising: the objective, the anchor, the teachers, the regularizers
    and the logging all go through `Scores`. The verifier is patched to accept half of the
    rollouts, so that the teachers see real demonstrations."""
    def half_correct(self, prompts, completions):
        correct = np.arange(len(prompts)) % 2 == 0
        return correct, np.where(correct, 0, -1)

    monkeypatch.setattr(SciQATask, "verify", half_correct)
    monkeypatch.setattr(HFPolicy, "logprobs", no_vocabulary_tensor)
    monkeypatch.setattr(HiddenScores, "materialise", no_vocabulary_tensor)
    cfg = C.load(preset="sciqa-smoke", overrides=["train.steps=1", "train.prompts_per_step=2", "train.probe_prompts=1",
                                                 f"train.objective={{name: {objective}}}", *extra])
    run = train(cfg, sciqa_base, tmp_path / "run", quiet=True)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1 and np.isfinite(last["loss"]) and np.isfinite(last["kl_base"])
    assert last["reward"] == 0.5
    if objective != "grpo":
        assert last["masked_prompts"] == 0.0  # every group had a demonstration


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_a_mixture_target_under_the_topk_tail_approximation(kind):
    """topk_tail toward a mixture of teachers: exact at k = V, a lower bound of the full divergence below."""
    g = torch.Generator().manual_seed(2)
    B, T, H, V, M = 2, 5, 6, 13, 3
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, 3:] = False
    tokens = torch.randint(0, V, (B, T), generator=g)
    w, w_t = torch.randn(V, H, generator=g), torch.randn(V, H, generator=g)
    student_h = torch.randn(B, T, H, generator=g, requires_grad=True)
    teachers = [HiddenScores(torch.randn(B, T, H, generator=g), keep, tokens, w_t) for _ in range(M)]
    target = mixture(teachers, torch.log_softmax(torch.randn(M, B, T, generator=g), 0))
    full = HiddenScores(student_h, keep, tokens, w, chunk_size=3).divergence(target, kind)
    exact = HiddenScores(student_h, keep, tokens, w, chunk_size=3, approximation="topk_tail", topk=V)
    torch.testing.assert_close(exact.divergence(target, kind), full, rtol=1e-5, atol=1e-6)
    coarse = HiddenScores(student_h, keep, tokens, w, chunk_size=3, approximation="topk_tail", topk=4)
    assert (coarse.divergence(target, kind) <= full + 1e-6).all()
    torch.testing.assert_close(full, token_divergence(log_softmax(student_h @ w.T), target.materialise(), kind) * keep,
                               rtol=1e-5, atol=1e-6)


def log_softmax(logits):
    return torch.log_softmax(logits, -1)
