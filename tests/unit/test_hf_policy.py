"""The `hf` policy on tiny random Llama/Qwen3 checkpoints built here (nothing downloaded), and the
chunked full-vocabulary divergence: exact batched scoring, explicit sampling settings, several EOS
ids, tokenizer round trips, checkpoints, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, LogitsProcessorList

from mitigate.core.fields import ConfigError
from mitigate.ops import DIVERGENCES, gather_tokens, token_divergence
from mitigate.policies import load_policy
from mitigate.policies.chunked import (
    chunked_divergence,
    chunked_token_logprobs,
    divergence,
    naive_divergence,
    tail_bucket,
    teacher_topk,
    topk_tail_divergence,
)
from mitigate.policies.hf import (
    PROBE_TEXT,
    HFConfig,
    HFPolicy,
    build_tiny_checkpoint,
    explicit_generation_config,
    load_tokenizer,
    repeated_runs,
    train_tokenizer,
)

TEXTS = ["The mitochondrion makes ATP for the cell.", "Answer: (B) <answer>B</answer>",
         "Water boils at 100 degrees.", "In 2024, 12345 cells don't divide."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("hf") / "llama", "llama", texts=TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def policy(tiny):
    return HFPolicy.from_folder(tiny, HFConfig(path=str(tiny)))


def encode(policy, text: str) -> list[int]:
    return policy.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def batch(policy):
    """Contexts of different lengths (student prompts and longer teacher contexts) and completions
    that end with either EOS id at different positions, padded after it."""
    eos_a, eos_b = policy.eos_ids
    pad = policy.pad_id
    contexts = [encode(policy, "Which organelle?"), encode(policy, "Water boils at what temperature? Explain."),
                encode(policy, "Here is a correct response: B. Now: which organelle?"), encode(policy, "Hi")]
    rows = [encode(policy, "The answer is B") + [eos_a], encode(policy, "B") + [eos_b],
            encode(policy, "I think the mitochondrion makes ATP, so B"), encode(policy, "<answer>C</answer>") + [eos_a]]
    width = max(len(r) for r in rows) + 2
    tokens = torch.full((len(rows), width), pad)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r)
    return contexts, tokens, policy.completion_mask(tokens)


# ----------------------------------------------------------------------------- chunked divergence

def projection_case(n=37, h=16, v=101, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, h, generator=g, requires_grad=True)
    t_h = torch.randn(n, h, generator=g)
    w = (0.5 * torch.randn(v, h, generator=g)).requires_grad_(True)
    w_t = 0.5 * torch.randn(v, h, generator=g)
    b = (0.1 * torch.randn(v, generator=g)).requires_grad_(True) if bias else None
    return s_h, t_h, w, w_t, b


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_divergence_equals_the_naive_full_tensor_path(kind, bias):
    s_h, t_h, w, w_t, b = projection_case(bias=bias)
    params = [s_h, w] + ([b] if bias else [])
    naive = naive_divergence(s_h, t_h, w, w_t, kind, b)
    g_naive = torch.autograd.grad((naive * torch.linspace(0.5, 2, len(naive))).sum(), params)
    chunked = chunked_divergence(s_h, t_h, w, w_t, kind, chunk_size=8, student_bias=b)  # 37 = 4 x 8 + 5
    g_chunked = torch.autograd.grad((chunked * torch.linspace(0.5, 2, len(chunked))).sum(), params)
    torch.testing.assert_close(chunked, naive, rtol=1e-5, atol=1e-6)
    for a, e in zip(g_chunked, g_naive):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_chunked_token_logprobs_equal_the_gathered_log_softmax():
    s_h, _, w, _, b = projection_case(bias=True)
    ids = torch.randint(0, w.shape[0], (len(s_h),), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(s_h @ w.T + b, -1).gather(-1, ids[:, None])[:, 0]
    got = chunked_token_logprobs(s_h, w, ids, chunk_size=6, bias=b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    weights = torch.linspace(-1, 2, len(ids))
    for a, e in zip(torch.autograd.grad((got * weights).sum(), [s_h, w, b]),
                    torch.autograd.grad((expected * weights).sum(), [s_h, w, b])):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_chunked_divergence_against_hand_values_and_edge_cases():
    # one position, two tokens, identity projection: p_s = softmax(0, log 3) = (1/4, 3/4), p_t = (1/2, 1/2)
    w = torch.eye(2)
    s_h, t_h = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]]), torch.zeros(1, 2)
    rkl = 0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5))
    torch.testing.assert_close(chunked_divergence(s_h, t_h, w, w, "reverse_kl", 1), rkl[None])
    assert chunked_divergence(torch.zeros(0, 2), torch.zeros(0, 2), w, w).shape == (0,)
    with pytest.raises(ValueError, match="unknown divergence"):
        chunked_divergence(s_h, t_h, w, w, "kl")
    with pytest.raises(ValueError, match="unknown approximation"):
        divergence(s_h, t_h, w, w, approximation="topk")


def test_the_teacher_is_a_stop_gradient_target():
    s_h, t_h, w, _, _ = projection_case()
    t_h.requires_grad_(True)
    out = chunked_divergence(s_h, t_h, w, w, "forward_kl", chunk_size=5)  # live teacher: same weight
    out.sum().backward()
    assert t_h.grad is None and s_h.grad is not None
    torch.testing.assert_close(w.grad, torch.autograd.grad(naive_divergence(s_h, t_h, w, w, "forward_kl").sum(),
                                                           w)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_tail_is_exact_at_full_k_and_a_lower_bound_below(kind):
    s_h, t_h, w, w_t, _ = projection_case(n=9, v=30)
    full = naive_divergence(s_h, t_h, w, w_t, kind)
    exact = divergence(s_h, t_h, w, w_t, kind, "topk_tail", chunk_size=4, topk=30)
    torch.testing.assert_close(exact, full, rtol=1e-5, atol=1e-6)
    approx = divergence(s_h, t_h, w, w_t, kind, "topk_tail", chunk_size=4, topk=5)
    assert bool((approx <= full + 1e-6).all()) and bool((approx > 0).all())


def test_topk_tail_matches_the_bucketed_distributions_by_hand():
    s_h, t_h, w, w_t, _ = projection_case(n=6, v=12)
    ids, t_top = teacher_topk(t_h, w_t, 3, chunk_size=4)
    t_full = torch.log_softmax(t_h @ w_t.T, -1)
    assert torch.equal(ids, t_full.topk(3, -1).indices)
    s_full = torch.log_softmax(s_h @ w.T, -1)
    s_bucket = torch.cat([s_full.gather(-1, ids), torch.log1p(-s_full.gather(-1, ids).exp().sum(-1, keepdim=True))],
                         -1)
    t_bucket = torch.cat([t_top, torch.log1p(-t_top.exp().sum(-1, keepdim=True))], -1)
    torch.testing.assert_close(tail_bucket(t_top), t_bucket)
    expected = token_divergence(s_bucket, t_bucket, "reverse_kl")
    got = topk_tail_divergence(s_h, w, ids, t_top, "reverse_kl", chunk_size=4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(got.sum(), [s_h, w])
    g_exp = torch.autograd.grad(expected.sum(), [s_h, w])
    for a, e in zip(g_got, g_exp):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tiny checkpoints and tokenizers

@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tokenizer_ids_survive_save_and_reload(tmp_path, arch):
    folder = build_tiny_checkpoint(tmp_path / arch, arch, texts=TEXTS, vocab_size=400)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    samples = [*TEXTS, PROBE_TEXT, "<|im_start|>user\nhi<|im_end|>\n", "  two  spaces\ttab\n\nnew", "üñí 漢字 emoji 🙂"]
    for text in samples:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert auto(text, add_special_tokens=False)["input_ids"] == ids, text
        assert auto.decode(ids) == text
    policy = HFPolicy.from_folder(folder, HFConfig(path=str(folder)))
    assert policy.model.config.model_type == arch
    saved = policy.save(tmp_path / f"{arch}-ckpt", {"task": {}, "config": {"model": {"name": "hf"}}})
    reloaded, meta = load_policy(saved)
    assert meta["policy"] == "hf" and reloaded.eos_ids == policy.eos_ids == sorted(meta["eos_ids"])
    for text in samples:
        assert encode(reloaded, text) == encode(policy, text)
    assert reloaded.tokenizer.chat_template == policy.tokenizer.chat_template
    assert reloaded.pad_id == policy.pad_id


def test_a_tokenizer_that_autotokenizer_would_rebuild_is_refused(tmp_path, tiny):
    """A qwen2 config makes AutoTokenizer swap in its own pre-tokenizer (digits split one by one)."""
    folder = tmp_path / "qwen2ish"
    shutil.copytree(tiny, folder)
    tok = train_tokenizer(["year 2024 and 1999 were 12345 items"] * 20, 300)
    tok.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "qwen2",
                                                    "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ConfigError, match="encodes differently"):
        load_tokenizer(folder)


def test_bad_model_folders_are_clear_errors(tmp_path, tiny):
    with pytest.raises(ConfigError, match="model folder not found"):
        HFPolicy.build(HFConfig(path=str(tmp_path / "nope")), task=None)
    with pytest.raises(ConfigError, match="model.path is empty"):
        HFPolicy.build(HFConfig(), task=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        HFPolicy.build(HFConfig(path=str(tmp_path / "empty")), task=None)
    nopad = tmp_path / "nopad"
    shutil.copytree(tiny, nopad)
    cfg = json.loads((nopad / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (nopad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="no pad token"):
        HFPolicy.build(HFConfig(path=str(nopad)), task=None)
    with pytest.raises(ConfigError, match="not a token"):
        HFPolicy.from_folder(tiny, HFConfig(path=str(tiny), eos_tokens=["<|nope|>"]))
    with pytest.raises(ConfigError, match="unknown tiny architecture"):
        build_tiny_checkpoint(tmp_path / "q2", "qwen2")
    assert not (tmp_path / "q2").exists()
    with pytest.raises(ConfigError, match="allowed: float32, bfloat16"):
        HFConfig(dtype="float16")


# ----------------------------------------------------------------------------- scoring

def test_several_eos_ids_end_a_completion(policy):
    a, b = policy.eos_ids
    assert {a, b} == {policy.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    tokens = torch.tensor([[7, a, 9, b], [7, 8, b, a], [7, 8, 9, 10]])
    assert policy.completion_mask(tokens).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    extra = HFPolicy.from_folder(policy.cfg.path, HFConfig(path=policy.cfg.path, eos_tokens=["<|im_start|>"]))
    assert len(extra.eos_ids) == 3


def test_batched_logprobs_equal_one_example_at_a_time(policy, batch):
    contexts, tokens, mask = batch
    assert len({len(c) for c in contexts}) == len(contexts) and len(set(mask.sum(1).tolist())) > 1
    with torch.no_grad():
        full = policy.logprobs(contexts, tokens, mask)
        assert full.dtype == torch.float32 and full.shape == (*tokens.shape, len(policy.tokenizer))
        for i in range(len(contexts)):
            n = int(mask[i].sum())  # alone and unpadded: only the row's own completion tokens
            one = policy.logprobs([contexts[i]], tokens[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(full[i, :n], one[0], rtol=0, atol=1e-5)
        # the same completion under a teacher context: row-wise equal too (a teacher batch is just other contexts)
        teacher = [encode(policy, "Demonstration: B. ") + c for c in contexts]
        t_full = policy.logprobs(teacher, tokens, mask)
        for i in range(len(contexts)):
            one = policy.logprobs([teacher[i]], tokens[i:i + 1], mask[i:i + 1])
            m = mask[i].bool()
            torch.testing.assert_close(t_full[i][m], one[0][m], rtol=0, atol=1e-5)


def test_sampling_ignores_the_checkpoint_generation_config(tmp_path, tiny):
    """A checkpoint asking for greedy-ish decoding must not change our sampler: generate's processed
    scores equal the raw logits (temperature 1) or logits / T, so no warper but temperature ran; the
    recorded log-probs of the sampled tokens equal generate's scores and the batched scoring path."""
    folder = tmp_path / "poisoned"
    shutil.copytree(tiny, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(do_sample=False, top_k=1, top_p=0.1, temperature=0.05, repetition_penalty=3.0, min_new_tokens=5,
               no_repeat_ngram_size=1)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    policy = HFPolicy.from_folder(folder, HFConfig(path=str(folder)))
    contexts = [encode(policy, t) for t in ("Which organelle?", "Water boils at what temperature? Say why.")]
    rows = [c for c in contexts for _ in range(3)]
    assert repeated_runs(rows) == 3 and repeated_runs(rows[:-1]) == 1
    for temperature in (1.0, 0.7):
        s = policy.sample(rows, 8, temperature, torch.Generator().manual_seed(1))
        # the same call by hand, asking generate for its scores
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1)))
        cfg = policy.generation_config(8, temperature, n=3)
        cfg.update(return_dict_in_generate=True, output_scores=True, output_logits=True)
        ids = torch.full((2, max(map(len, contexts))), policy.pad_id)
        attn = torch.zeros_like(ids)
        for i, c in enumerate(contexts):
            ids[i, -len(c):], attn[i, -len(c):] = torch.tensor(c), 1
        with explicit_generation_config(policy.model, cfg), torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            out = policy.model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg,
                                        logits_processor=LogitsProcessorList([]))
        new = out.sequences[:, ids.shape[1]:]
        steps = new.shape[1]
        assert torch.equal(s.tokens[:, :steps][s.mask[:, :steps].bool()], new[s.mask[:, :steps].bool()])
        scores, logits = torch.stack(out.scores, 1), torch.stack(out.logits, 1)
        torch.testing.assert_close(scores, logits / temperature)
        gen_lp = torch.log_softmax(scores, -1).gather(-1, new[..., None])[..., 0]
        m = s.mask[:, :steps].float()
        torch.testing.assert_close(s.sampled_logprobs[:, :steps], gen_lp * m, rtol=0, atol=1e-5)
        if temperature == 1.0:  # the sampled distribution is the scored one
            with torch.no_grad():
                scored = gather_tokens(policy.logprobs(rows, s.tokens, s.mask), s.tokens) * s.mask
            torch.testing.assert_close(scored, s.sampled_logprobs, rtol=0, atol=1e-5)
        assert s.token_entropy.shape == (6,) and bool((s.token_entropy > 0).all())
    assert len({tuple(t) for t in s.tokens.tolist()}) > 1, "top_k=1 leaked in: every sample identical"
    assert policy.model.generation_config.top_k == 1, "the checkpoint's own config is restored after sampling"


def test_sampling_is_seeded_by_the_callers_generator(policy):
    rows = [encode(policy, "Which organelle?")] * 4
    a = policy.sample(rows, 6, 1.0, torch.Generator().manual_seed(3))
    b = policy.sample(rows, 6, 1.0, torch.Generator().manual_seed(3))
    c = policy.sample(rows, 6, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (4, 6) and bool((a.tokens[a.mask == 0] == policy.pad_id).all())
    assert policy.sample([], 6).tokens.shape == (0, 6)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_policy_divergence_equals_the_full_logprob_path(policy, batch, kind):
    contexts, tokens, mask = batch
    teacher = policy.frozen_copy()
    teacher_contexts = [encode(policy, "Demonstration: B. ") + c for c in contexts]
    params = [p for p in policy.model.parameters()]
    got = policy.divergence(teacher, contexts, teacher_contexts, tokens, mask, kind)
    g_got = torch.autograd.grad((got * mask).sum(), params)
    with torch.no_grad():
        t_lp = teacher.logprobs(teacher_contexts, tokens, mask)
    expected = token_divergence(policy.logprobs(contexts, tokens, mask), t_lp, kind) * mask
    g_exp = torch.autograd.grad(expected.sum(), params)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, e in zip(g_got, g_exp):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_token_logprobs_without_the_vocabulary_tensor(policy, batch):
    contexts, tokens, mask = batch
    params = list(policy.model.parameters())
    got = policy.token_logprobs(contexts, tokens, mask)
    g_got = torch.autograd.grad(got.sum(), params)
    expected = gather_tokens(policy.logprobs(contexts, tokens, mask), tokens) * mask
    g_exp = torch.autograd.grad(expected.sum(), params)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for a, e in zip(g_got, g_exp):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_and_bf16(tiny, batch):
    contexts, tokens, mask = batch
    plain = HFPolicy.from_folder(tiny, HFConfig(path=str(tiny)))
    ckpt = HFPolicy.from_folder(tiny, HFConfig(path=str(tiny), activation_checkpointing=True))
    assert all(layer.gradient_checkpointing for layer in ckpt.model.model.layers)
    grads = []
    for p in (plain, ckpt):
        p.model.train()
        lp = gather_tokens(p.logprobs(contexts, tokens, mask), tokens)
        grads.append(torch.autograd.grad((lp * mask).sum(), list(p.model.parameters())))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    half = HFPolicy.from_folder(tiny, HFConfig(path=str(tiny), dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        lp = half.logprobs(contexts, tokens, mask)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_frozen_copy_and_checkpoint_round_trip(tmp_path, policy, batch):
    contexts, tokens, mask = batch
    frozen = policy.frozen_copy()
    assert not frozen.model.training and not any(p.requires_grad for p in frozen.model.parameters())
    head = frozen.model.get_output_embeddings().weight
    assert head.data_ptr() != policy.model.get_output_embeddings().weight.data_ptr()
    record = {"method": "base", "task": {"name": "x"}, "config": {"model": {"name": "hf", "path": "/elsewhere",
                                                                           "divergence_chunk": 7}}}
    folder = policy.save(tmp_path / "ckpt", record)
    assert {"config.json", "model.safetensors", "tokenizer.json", "mitigate.json"} <= {f.name for f in folder.iterdir()}
    loaded, meta = load_policy(folder)
    assert isinstance(loaded, HFPolicy) and meta["method"] == "base"
    assert loaded.cfg.divergence_chunk == 7 and loaded.cfg.path == str(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logprobs(contexts, tokens, mask), policy.logprobs(contexts, tokens, mask))


def test_repeated_rows_and_split_scores(policy, batch):
    """A batch that repeats its rows scores like the rows alone (one forward over the distinct rows),
    and `HiddenScores.rows` splits scores of stacked blocks back into each block's own scores."""
    contexts, tokens, mask = batch
    n = len(contexts)
    with torch.no_grad():
        alone = policy.scores(contexts, tokens, mask)
        twice = policy.scores(contexts + contexts, tokens.repeat(2, 1), mask.repeat(2, 1))
        assert twice.hidden.shape[0] == 2 * n
        for lo in (0, n):
            block = twice.rows(lo, lo + n)
            torch.testing.assert_close(block.token_logprobs(), alone.token_logprobs(), rtol=0, atol=1e-6)
            torch.testing.assert_close(block.entropy(), alone.entropy(), rtol=0, atol=1e-6)
        target = policy.scores([encode(policy, "Demonstration: B. ") + c for c in contexts], tokens, mask)
        torch.testing.assert_close(twice.rows(n, 2 * n).divergence(target), alone.divergence(target), rtol=0, atol=1e-6)
