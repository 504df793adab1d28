"""Policy: KV-cache sampling vs full-forward scoring, padding invariance, seeding, EOS masking,
safetensors checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mitigate.ops import gather_tokens
from mitigate.policies import CheckpointError, load_policy, resolve_checkpoint, tiny_gpt
from mitigate.policies.base import META_FILE
from mitigate.policies.tiny_gpt import (
    CHECKPOINT_FILES,
    completion_mask,
    continuation_logprobs,
    sample,
    save_checkpoint,
    sequence_logprob,
)
from mitigate.tasks.graph import EOS, PAD


@pytest.fixture(scope="module")
def contexts(smoke_task):
    """Mixed-length contexts: plain prompts and demonstration-prefixed teacher contexts."""
    qs = smoke_task.prompts("id_test")[:4]
    out = []
    for q in qs:
        demo = smoke_task.path_table(q.start, q.goal).paths[0]
        out += [q.tokens, smoke_task.teacher_context(q, demo)]
    return out


class Recorder:
    """Keeps the next-token logits of every forward the sampler runs (its decoder's `_logits`) and
    the distribution each unfinished row drew from at each step (`_draw`: logp[node])."""

    def __init__(self, model=None):
        self.logits, self.drawn = [], []
        self.original, self.original_draw = tiny_gpt._Decoder._logits, tiny_gpt._draw

        def recorded(decoder, h):
            out = self.original(decoder, h)
            self.logits.append(out.detach().float().clone())
            return out

        def recorded_draw(logp, node, generator):
            self.drawn.append(logp[node].detach().clone())
            return self.original_draw(logp, node, generator)

        tiny_gpt._Decoder._logits = recorded
        tiny_gpt._draw = recorded_draw

    def close(self):
        tiny_gpt._Decoder._logits, tiny_gpt._draw = self.original, self.original_draw


def test_sample_logprobs_match_full_forward(smoke_model, contexts):
    n_rep = 4
    ctx = [c for c in contexts for _ in range(n_rep)]
    rec = Recorder(smoke_model)
    try:
        s = sample(smoke_model, ctx, 7, generator=torch.Generator().manual_seed(0))
    finally:
        rec.close()
    steps = len(rec.logits)
    assert 1 <= steps <= 7 and len(rec.drawn) == steps
    # The model runs once per distinct prefix (context + tokens so far), not once per row: the
    # prompt once per distinct context, each decode step once per distinct (prefix, token) pair of
    # the unfinished rows (plus, until the buffers are next compacted, the slots of prefixes whose
    # rows all ended). At step t the unfinished rows, in order, drew from `rec.drawn[t]`.
    per_row = []
    for t, (logits, drawn) in enumerate(zip(rec.logits, rec.drawn)):
        active = s.mask[:, t].nonzero().squeeze(-1)
        n_prefixes = len({(tuple(ctx[i]), tuple(s.tokens[i, :t].tolist())) for i in active.tolist()})
        assert n_prefixes <= logits.shape[0] < len(ctx)  # rows repeated by n_rep share their prefixes
        assert drawn.shape[0] == len(active)
        row = torch.zeros((len(ctx), logits.shape[-1]))
        row[active] = drawn
        per_row.append(row)
    assert rec.logits[0].shape[0] == len(contexts)  # the prompt once per distinct context
    cached = torch.stack(per_row, 1)  # [B, steps, V]: what the sampler drew from (log-probs)
    with torch.no_grad():
        full = continuation_logprobs(smoke_model, ctx, s.tokens, s.mask)
    m = s.mask[:, :steps].bool()
    assert m.sum() > len(ctx)  # several real positions per row
    tok = s.tokens[:, :steps]
    np.testing.assert_allclose(gather_tokens(cached, tok)[m].numpy(), gather_tokens(full[:, :steps], tok)[m].numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(cached[m].numpy(), full[:, :steps][m].numpy(), atol=1e-5)
    # the reported token entropy is that of the same distributions
    ent = -(full.exp() * full).sum(-1)
    expect = (ent * s.mask).sum(1) / s.mask.sum(1)
    np.testing.assert_allclose(s.token_entropy.numpy(), expect.numpy(), atol=1e-5)


def test_sample_draws_from_model_distribution(smoke_model, smoke_task):
    """Sampled tokens are drawn from the model: first-token frequencies match its probabilities."""
    q = smoke_task.prompts("id_test")[0]
    n = 4000
    s = sample(smoke_model, [q.tokens] * n, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p = continuation_logprobs(smoke_model, [q.tokens], s.tokens[:1, :1], s.mask[:1, :1])[0, 0].exp()
    freq = torch.bincount(s.tokens[:, 0], minlength=len(p)).float() / n
    assert (freq - p).abs().max() < 0.04
    assert s.tokens[:, 0].eq(q.start).float().mean() > 0.5  # the smoke base learned to start at s
    cold = sample(smoke_model, [q.tokens] * 200, 1, temperature=1e-3, generator=torch.Generator().manual_seed(1))
    assert cold.tokens[:, 0].eq(int(p.argmax())).all()  # temperature -> 0 is greedy


def test_padding_does_not_change_scores(smoke_model, contexts):
    s = sample(smoke_model, contexts, 7, generator=torch.Generator().manual_seed(2))
    lengths = s.mask.sum(1)
    assert len(set(len(c) for c in contexts)) > 1
    with torch.no_grad():
        batched = continuation_logprobs(smoke_model, contexts, s.tokens, s.mask)
        batched_seq = sequence_logprob(smoke_model, contexts, s.tokens, s.mask)
        for i, c in enumerate(contexts):
            n = int(lengths[i])
            alone = continuation_logprobs(smoke_model, [c], s.tokens[i:i + 1, :n], s.mask[i:i + 1, :n])
            np.testing.assert_allclose(batched[i, :n].numpy(), alone[0].numpy(), atol=1e-5)
            alone_seq = sequence_logprob(smoke_model, [c], s.tokens[i:i + 1, :n], s.mask[i:i + 1, :n])
            assert float(batched_seq[i]) == pytest.approx(float(alone_seq[0]), abs=1e-4)


def test_context_actually_matters(smoke_model, smoke_task):
    """Guard for the padding test: different contexts do give different scores."""
    qs = smoke_task.prompts("id_test")[:2]
    cont = torch.tensor([[qs[0].start, EOS]])
    m = torch.ones_like(cont)
    with torch.no_grad():
        a = continuation_logprobs(smoke_model, [qs[0].tokens], cont, m)
        b = continuation_logprobs(smoke_model, [qs[1].tokens], cont, m)
    assert (a - b).abs().max() > 1e-3


def test_sampling_is_seeded(smoke_model, contexts):
    ctx = contexts * 8

    def draw(seed):
        return sample(smoke_model, ctx, 7, generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(5), draw(5), draw(6)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.token_entropy, b.token_entropy)
    assert not torch.equal(a.tokens, c.tokens)
    # batching (smaller batch_size) does not change a seeded draw's shape or validity
    d = sample(smoke_model, ctx, 7, generator=torch.Generator().manual_seed(5), batch_size=5)
    assert d.tokens.shape == a.tokens.shape


def test_sample_stops_at_eos_and_masks_after(smoke_model, contexts):
    ctx = contexts * 8
    rec = Recorder(smoke_model)
    try:
        s = sample(smoke_model, ctx, 16, generator=torch.Generator().manual_seed(3))
    finally:
        rec.close()
    is_eos = s.tokens == EOS
    assert is_eos.any(1).all(), "the smoke base ends every rollout within 16 tokens"
    first = is_eos.float().argmax(1)
    for i in range(len(ctx)):
        e = int(first[i])
        assert s.mask[i, : e + 1].eq(1).all() and s.mask[i, e + 1:].eq(0).all()
        assert s.tokens[i, e + 1:].eq(PAD).all()
        assert (s.tokens[i, :e] != PAD).all()
    assert is_eos.sum(1).eq(1).all()
    # the loop stops once every row has ended: one forward per generated position, no more
    assert len(rec.logits) == int(first.max()) + 1 < 16
    assert torch.equal(s.mask, completion_mask(s.tokens, EOS))


def test_completion_mask():
    t = torch.tensor([[7, 8, EOS, 9, EOS], [7, 8, 9, 9, 9], [EOS, 7, 7, 7, 7]])
    assert completion_mask(t, EOS).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sample_empty(smoke_model):
    s = sample(smoke_model, [], 5)
    assert s.tokens.shape == (0, 5) and s.token_entropy.shape == (0,)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(smoke_model, tmp_path):
    extra = {"method": "test", "task": {"seed": 1}, "nested": [1, 2.5, "x"]}
    out = save_checkpoint(smoke_model, tmp_path / "ckpt", extra)
    assert sorted(p.name for p in out.iterdir()) == sorted(CHECKPOINT_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folder left behind
    policy, meta = load_policy(out)
    assert meta == extra
    model = policy.model
    assert not model.training
    ref = smoke_model.state_dict()
    got = model.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    stored = load_file(out / "model.safetensors")
    for k, v in stored.items():
        assert torch.equal(v, ref[k]), k
    # overwriting in place is atomic and leaves only the documented files
    save_checkpoint(smoke_model, out, {"method": "again"})
    assert load_policy(out)[1] == {"method": "again"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_resolve_run_folder(smoke_base):
    assert resolve_checkpoint(smoke_base) == smoke_base / "checkpoint"
    assert resolve_checkpoint(smoke_base / "checkpoint") == smoke_base / "checkpoint"


def test_missing_checkpoint_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as err:
        load_policy(missing)
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as err:
        load_policy(empty)
    assert str(empty) in str(err.value) and META_FILE in str(err.value)
    # the record without the weights: the policy names the file that is missing
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / META_FILE).write_text('{"policy": "tiny_gpt"}')
    with pytest.raises(CheckpointError) as err:
        load_policy(partial)
    assert str(partial) in str(err.value) and "model.safetensors" in str(err.value)


def test_repeated_rows_run_once_with_the_same_values_and_gradients(smoke_model, contexts, monkeypatch):
    """Scoring a batch with repeated (context, completion) rows runs each distinct row once; values
    and gradients equal those of the forward over every row (`distinct_rows` off)."""
    from mitigate.policies import base, tiny_gpt

    s = sample(smoke_model, contexts, 7, generator=torch.Generator().manual_seed(3))
    rows = [0, 1, 0, 2, 1, 0, 3, 3]  # repeats of four distinct rows
    ctx, tokens, mask = [contexts[i] for i in rows], s.tokens[rows], s.mask[rows]
    first, index = base.distinct_rows(smoke_model, ctx, tokens, mask)
    assert first.tolist() == [0, 1, 3, 6] and index.tolist() == [0, 1, 0, 2, 1, 0, 3, 3]
    weights = torch.linspace(-1, 1, len(rows))[:, None, None]

    def forward_and_grads():
        smoke_model.zero_grad()
        lp = continuation_logprobs(smoke_model, ctx, tokens, mask)
        (lp.gather(-1, tokens[..., None]) * mask[..., None] * weights).sum().backward()
        return lp.detach(), [p.grad.clone() for p in smoke_model.parameters()]

    calls, model_forward = [], smoke_model.forward

    def counted_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return model_forward(*args, **kwargs)

    monkeypatch.setattr(smoke_model, "forward", counted_forward)
    # one forward per call: the shared-context path (tests/unit/test_sampler_speed.py) off here
    monkeypatch.setattr(tiny_gpt, "shared_prefix", lambda model, contexts: None)
    deduped, grads = forward_and_grads()
    monkeypatch.setattr(tiny_gpt, "distinct_rows", lambda *a: (None, None))
    every_row, grads_every_row = forward_and_grads()
    assert calls == [4, 8]
    assert torch.equal(deduped, every_row)
    for g, h in zip(grads, grads_every_row):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)  # summation order only


def test_rows_are_not_merged_when_dropout_is_on(smoke_task):
    """Repeats under dropout must draw their own masks, so a training-mode model with dropout scores
    every row; in eval mode (targets, the reference) the same model merges them."""
    import dataclasses

    from mitigate import config as C
    from mitigate.policies import base
    from mitigate.policies.tiny_gpt import build_model

    model = build_model(dataclasses.replace(C.load(preset="smoke").model, dropout=0.1), smoke_task.vocab)
    ctx = [smoke_task.prompts("id_test")[0].tokens] * 2
    tokens, mask = torch.tensor([[3, EOS], [3, EOS]]), torch.ones(2, 2)
    assert base.distinct_rows(model.eval(), ctx, tokens, mask)[0].tolist() == [0]
    assert base.distinct_rows(model.train(), ctx, tokens, mask) == (None, None)
