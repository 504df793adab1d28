"""`tiny_gpt`: a small GPT-2 style causal LM built from a `transformers` config (no download),
a batched KV-cache sampler, batched log-prob scoring of continuations under arbitrary contexts
(prompt or demonstration-prefixed teacher context), and safetensors checkpoints.

The special tokens come from the task's `Vocab` when the model is built and are stored in the
model's own config, so a checkpoint loads without its task."""

from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.cache_utils import DynamicCache
from transformers.utils import logging as hf_logging

from mitigate.core.fields import Section, opt
from mitigate.core.io import atomic_dir
from mitigate.policies.base import (
    META_FILE,
    CheckpointError,
    FullScores,
    Samples,
    distinct_rows,
    has_dropout,
    policy_divergence,
    policy_token_logprobs,
    register_policy,
)

CHECKPOINT_FILES = ("config.json", "model.safetensors", META_FILE)


@dataclass
class TinyGPTConfig(Section):
    name: str = opt("tiny_gpt", "registered policy name")
    n_embd: int = opt(128, "width of the GPT-2 style transformer", min=8, max=8192)  # maxima: typos, not models
    n_layer: int = opt(3, "number of transformer blocks", min=1, max=256)
    n_head: int = opt(4, "attention heads per block", min=1, max=256)
    dropout: float = opt(0.0, "dropout during pretraining (teachers always run with dropout off)",
                         min=0.0, max=0.9)
    activation: str = opt("gelu_pytorch_tanh", "the MLP's activation (a transformers ACT2FN name): GPT-2's tanh "
                          "GELU, or 'gelu' (exact erf GELU: the same shape, a 3-5x faster kernel on CPU)",
                          choices=("gelu_pytorch_tanh", "gelu"))


def build_model(model_cfg, vocab, n_positions: int = 32) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab.size, n_positions=n_positions, n_embd=model_cfg.n_embd,
        n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
        resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout, attn_pdrop=model_cfg.dropout,
        bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad,
        activation_function=model_cfg.activation,
    )
    return GPT2LMHeadModel(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- padding helpers

def left_pad(seqs: list[list[int]], device, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: (tokens [B, L], mask [B, L])."""
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            tokens[i, width - len(s):] = torch.as_tensor(s)
            mask[i, width - len(s):] = 1
    return tokens.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def completion_mask(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """1 on generated tokens up to and including the first EOS, 0 after it."""
    is_eos = (tokens == eos).long()
    after = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after).long()


# ----------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample(model, contexts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, batch_size: int = 4096, progress=None) -> Samples:
    """Ancestral sampling with a KV cache, batched. Stops a batch once every row emitted EOS.

    Contexts may differ in length: they are left-padded and positions follow the mask, so a
    row's samples do not depend on what it was batched with (up to float rounding)."""
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if not contexts:
        empty = torch.zeros((0, max_new_tokens), dtype=torch.long)
        return Samples(tokens=empty, mask=empty.clone(), token_entropy=torch.zeros(0))
    outs, ents = [], []
    for lo in range(0, len(contexts), batch_size):
        tok, ent = _sample_batch(model, contexts[lo:lo + batch_size], max_new_tokens, temperature,
                                 generator, device, pad, eos)
        outs.append(tok)
        ents.append(ent)
        if progress is not None:
            progress.update(len(tok))
    model.train(was_training)
    tokens = torch.cat(outs)
    mask = completion_mask(tokens, eos)
    tokens = tokens.masked_fill(mask == 0, pad)
    return Samples(tokens=tokens, mask=mask, token_entropy=torch.cat(ents))


def _sample_batch(model, contexts, max_new_tokens, temperature, generator, device, pad, eos):
    # Rows that share a prefix (the same context and the same tokens so far) have the same keys,
    # values and next-token distribution, so the model runs once per distinct prefix, a "node":
    # callers repeat each context (GRPO groups, n samples per prompt) and a peaked policy repeats its
    # first tokens. Rows that emitted EOS draw nothing more. Each unfinished row draws its own token
    # by inverting its node's cumulative distribution at a uniform of its own (`_draw`: exact
    # ancestral sampling, one uniform per unfinished row and step).
    first: dict[tuple, int] = {}
    node = torch.tensor([first.setdefault(tuple(c), len(first)) for c in contexts], device=device)
    ids, mask = left_pad(list(first), device, pad)  # per node (a slot of the decoder's buffers) from here on
    decoder = _Decoder(model, len(first), ids.shape[1] + max_new_tokens)
    logits = decoder.prefill(ids, mask)
    next_pos = positions(mask)[:, -1] + 1
    n = len(node)
    generated = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=device)
    ent_sum = torch.zeros(n, device=device)
    n_tok = torch.zeros(n, device=device)
    active = torch.arange(n, device=device)  # the rows that have not emitted EOS; node[i] is active[i]'s node
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, -1)  # per node
        ent_sum[active] += -(logp.exp() * logp).sum(-1)[node]
        n_tok[active] += 1
        nxt = _draw(logp, node, generator)
        generated[active, t] = nxt
        going = nxt != eos
        if t == max_new_tokens - 1 or not bool(going.any()):
            break
        active, node, nxt = active[going], node[going], nxt[going]
        # The next nodes: distinct (node, token) pairs; each inherits its parent's keys and values.
        children, child = torch.unique(node * logits.shape[-1] + nxt, return_inverse=True)
        parent, token = children // logits.shape[-1], children % logits.shape[-1]
        slots = len(next_pos)
        if len(parent) >= 0.75 * slots and bool((parent[1:] > parent[:-1]).all()):
            # No prefix split and few ended: each child keeps its parent's slot and the slots whose
            # rows all ended run a padding token (unused), which costs less than moving the buffers.
            node = parent[child]
            token = torch.full((slots,), pad, dtype=torch.long, device=device).index_copy_(0, parent, token)
        else:
            node = child
            decoder.select(parent)
            next_pos = next_pos[parent]
        logits = decoder.step(token, next_pos)
        next_pos = next_pos + 1
    return generated.cpu(), (ent_sum / n_tok.clamp(min=1)).cpu()


def _draw(logp: torch.Tensor, node: torch.Tensor, generator) -> torch.Tensor:
    """One token per row from its node's distribution exp(logp[node]): a float64 uniform per row
    through the cumulative distribution (the first token whose cumulative sum exceeds u x total)."""
    cdf = logp.double().exp().cumsum(-1)[node]
    u = torch.rand(len(node), 1, generator=generator, dtype=torch.float64, device=logp.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)


class _Decoder:
    """GPT-2's forward for sampling, on the model's own modules, with each layer's keys and values in
    preallocated buffers [nodes, heads, positions, head dim]: a decode step writes one position in
    place (no `torch.cat` of the cache), and a change of nodes is one row gather per buffer. Eval
    mode only (no dropout); logits at the last position, float32."""

    def __init__(self, model: GPT2LMHeadModel, nodes: int, capacity: int):
        c = model.config
        if c.add_cross_attention:
            raise ValueError("the sampler's decoder has no cross-attention")
        self.model, self.blocks = model, model.transformer.h
        self.heads, self.head_dim = c.n_head, c.n_embd // c.n_head
        p = next(model.parameters())
        shape = (nodes, self.heads, capacity, self.head_dim)
        self.keys = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.blocks]
        self.values = [torch.empty(shape, dtype=p.dtype, device=p.device) for _ in self.blocks]
        self.valid = torch.zeros((nodes, capacity), dtype=torch.bool, device=p.device)  # keys a query may see
        self.length = 0

    def _layers(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h [N, S, d] at positions length..length+S-1 -> the final hidden states [N, S, d]."""
        n, s, d = h.shape
        lo, hi = self.length, self.length + s
        for i, block in enumerate(self.blocks):
            attn = block.attn
            qkv = attn.c_attn(block.ln_1(h)).view(n, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            self.keys[i][:, :, lo:hi] = qkv[1]
            self.values[i][:, :, lo:hi] = qkv[2]
            keys, values = self.keys[i][:, :, :hi], self.values[i][:, :, :hi]
            out = torch.nn.functional.scaled_dot_product_attention(qkv[0], keys, values, attn_mask=mask,
                                                                   scale=attn.scaling)
            h = h + attn.c_proj(out.transpose(1, 2).reshape(n, s, d))
            h = h + block.mlp(block.ln_2(h))
        self.length = hi
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.transformer.ln_f(h)).float()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The left-padded contexts [N, L] (mask [N, L]): next-token logits [N, V]."""
        s = ids.shape[1]
        wte, wpe = self.model.transformer.wte, self.model.transformer.wpe
        h = wte(ids) + wpe(positions(mask))
        self.valid[:, :s] = mask.bool()
        causal = torch.ones((s, s), dtype=torch.bool, device=ids.device).tril()
        # a padding query sees itself only (its output is never a key a real query sees)
        see = (causal & self.valid[:, None, None, :s]) | torch.eye(s, dtype=torch.bool, device=ids.device)
        return self._logits(self._layers(h, see)[:, -1])

    def select(self, parent: torch.Tensor) -> None:
        """Keep node `parent[j]`'s keys and values as node j's (children inherit their parent's)."""
        if len(parent) == len(self.valid) and bool((parent == torch.arange(len(parent), device=parent.device)).all()):
            return
        self.keys = [k.index_select(0, parent) for k in self.keys]
        self.values = [v.index_select(0, parent) for v in self.values]
        self.valid = self.valid.index_select(0, parent)

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per node [N] at positions `pos` [N]: next-token logits [N, V]."""
        t = self.model.transformer
        h = (t.wte(token) + t.wpe(pos))[:, None]
        self.valid[:, self.length] = True
        see = self.valid[:, None, None, :self.length + 1]
        return self._logits(self._layers(h, see)[:, -1])


# ----------------------------------------------------------------------------- scoring

def continuation_logprobs(model, contexts: list[list[int]], continuations: torch.Tensor,
                          cont_mask: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities `log p(. | context, y_<t)` at every continuation position.

    contexts: token lists (any lengths; left-padded here). continuations: [B, T] tokens with
    `cont_mask` [B, T] marking real positions. Returns [B, T, V] float32 (grad flows if enabled).

    Each distinct (context, continuation) row runs once (`distinct_rows`). When the rows share
    their contexts (a group's rollouts share the prompt; teacher rows share prompt and
    demonstration), each distinct context runs once and the continuations run on its keys and
    values (`shared_prefix`); values equal the one-forward path's to float rounding (tests).
    """
    device = next(model.parameters()).device
    pad = getattr(model, "module", model).config.pad_token_id  # `model` may be wrapped in DDP (TinyGPT.wrapped)
    first, rows = distinct_rows(model, contexts, continuations, cont_mask)
    if first is not None:
        contexts, continuations, cont_mask = [contexts[i] for i in first], continuations[first], cont_mask[first]
    prefix = shared_prefix(model, contexts)
    if prefix is not None:
        logprobs = _prefix_cached_logprobs(model, prefix, continuations, cont_mask, device, pad)
        return logprobs if first is None else logprobs[rows.to(device)]
    ctx, ctx_mask = left_pad(contexts, device, pad)
    cont = continuations.to(device)
    ids = torch.cat([ctx, cont], 1)
    mask = torch.cat([ctx_mask, cont_mask.to(device).long()], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    width = ctx.shape[1]
    logits = out.logits[:, width - 1:-1].float()  # position i predicts token i+1
    logprobs = torch.log_softmax(logits, -1)
    return logprobs if first is None else logprobs[rows.to(device)]


def shared_prefix(model, contexts: list[list[int]]) -> tuple[list[tuple], torch.Tensor] | None:
    """(distinct contexts, row -> its context) when at most half as many contexts as rows are distinct
    and the model runs a context once for all its rows: not in DDP (one forward per backward) and
    not with dropout on (each row draws its own masks). None: score in one forward."""
    if hasattr(model, "module") or (model.training and has_dropout(model)):
        return None
    first: dict[tuple, int] = {}
    index = [first.setdefault(tuple(c), len(first)) for c in contexts]
    if 2 * len(first) > len(contexts):
        return None
    return list(first), torch.as_tensor(index)


# transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns on every
# call); older releases only know `past_key_values`.
CACHE_ARG = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


def _prefix_cached_logprobs(model, prefix, continuations, cont_mask, device, pad) -> torch.Tensor:
    """`continuation_logprobs` with each distinct context run once: the contexts' forward fills a
    KV cache, its rows are repeated per continuation (an index, so gradients flow back into the
    shared context), and the continuations run on it. Position 0 is predicted by the context's
    last position, position i by continuation token i - 1."""
    distinct, index = prefix
    index = index.to(device)
    ctx, ctx_mask = left_pad([list(c) for c in distinct], device, pad)
    cache = DynamicCache()
    out = model(input_ids=ctx, attention_mask=ctx_mask, position_ids=positions(ctx_mask), use_cache=True,
                **{CACHE_ARG: cache})
    last = out.logits[:, -1]
    if continuations.shape[1] == 1:
        return torch.log_softmax(last[index, None].float(), -1)
    cache.batch_select_indices(index)
    mask = torch.cat([ctx_mask[index], cont_mask.to(device).long()], 1)
    out = model(input_ids=continuations.to(device)[:, :-1], attention_mask=mask[:, :-1],
                position_ids=positions(mask)[:, ctx.shape[1]:-1], use_cache=True, **{CACHE_ARG: cache})
    logits = torch.cat([last[index, None], out.logits], 1).float()
    return torch.log_softmax(logits, -1)


def sequence_logprob(model, contexts, continuations, cont_mask) -> torch.Tensor:
    """Sum of token log-probs of each continuation: [B]."""
    lp = continuation_logprobs(model, contexts, continuations, cont_mask)
    lp = lp.gather(-1, continuations.to(lp.device).unsqueeze(-1)).squeeze(-1)
    return (lp * cont_mask.to(lp.device)).sum(-1)


# ----------------------------------------------------------------------------- checkpoints

@contextmanager
def _no_progress_bars():
    """transformers' own bars (loading, writing shards) are noise for a model this small, and
    would break `quiet=True` in the Python API (the CLI turns them off once for the process)."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_checkpoint(model, directory: str | Path, meta: dict) -> Path:
    """Atomically write `config.json`, `model.safetensors` and `mitigate.json` (task + config)."""
    with atomic_dir(directory) as tmp, _no_progress_bars():
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        for f in list(tmp.iterdir()):  # only the files we document
            if f.name not in CHECKPOINT_FILES:
                f.unlink()
    return Path(directory)


def load_model(folder: str | Path, device="cpu") -> GPT2LMHeadModel:
    folder = Path(folder)
    missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"incomplete tiny_gpt checkpoint '{folder}': missing {', '.join(missing)}")
    with _no_progress_bars():
        model = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).to(device)
    return model.eval()


def clone_frozen(model) -> GPT2LMHeadModel:
    """A no-grad, eval-mode copy (frozen base model / EMA teacher)."""
    twin = GPT2LMHeadModel(model.config).to(next(model.parameters()).device)
    twin.load_state_dict(model.state_dict())
    twin.eval().requires_grad_(False)
    return twin


# ----------------------------------------------------------------------------- the policy

@register_policy("tiny_gpt", TinyGPTConfig)
class TinyGPT:
    """The graph task's policy: the functions above behind the `Policy` interface.

    `wrapped` is what gradient forwards go through: `accelerate.prepare` may wrap `model` in DDP,
    whose forward must run for every backward so that gradients are averaged across processes.
    Sampling and no-grad scoring use the bare `model`: a DDP forward is a collective, and the
    probe runs on the main process only."""

    def __init__(self, model: GPT2LMHeadModel):
        self.model = model
        self.wrapped = model

    @classmethod
    def build(cls, cfg: TinyGPTConfig, task) -> TinyGPT:
        return cls(build_model(cfg, task.vocab))

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> TinyGPT:
        return cls(load_model(folder, device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_params(self) -> int:
        return n_params(self.model)

    def sample(self, contexts, max_new_tokens, temperature=1.0, generator=None, batch_size=4096,
               progress=None) -> Samples:
        return sample(self.model, contexts, max_new_tokens, temperature, generator, batch_size, progress)

    def logprobs(self, contexts, tokens, mask) -> torch.Tensor:
        module = self.wrapped if torch.is_grad_enabled() else self.model
        return continuation_logprobs(module, contexts, tokens, mask)

    def scores(self, contexts, tokens, mask) -> FullScores:
        """The full-tensor path: the [B, T, V] log-probs of one forward (a vocabulary of a few dozen)."""
        return FullScores(self.logprobs(contexts, tokens, mask), tokens)

    def token_logprobs(self, contexts, tokens, mask) -> torch.Tensor:
        return policy_token_logprobs(self, contexts, tokens, mask)

    def divergence(self, other, contexts, other_contexts, tokens, mask, kind="reverse_kl") -> torch.Tensor:
        return policy_divergence(self, other, contexts, other_contexts, tokens, mask, kind)

    def sequence_logprobs(self, contexts, tokens, mask) -> torch.Tensor:
        return sequence_logprob(self.model, contexts, tokens, mask)

    def completion_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return completion_mask(tokens, self.model.config.eos_token_id)

    def pretraining_loss(self, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over target tokens (the loss mask: never the prompt or demonstration)."""
        attn = (tokens != self.model.config.pad_token_id).long()
        logits = self.model(input_ids=tokens, attention_mask=attn).logits[:, :-1]
        target, m = tokens[:, 1:], loss_mask[:, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                reduction="none").view_as(m)
        return (nll * m).sum() / m.sum()

    def frozen_copy(self) -> TinyGPT:
        return TinyGPT(clone_frozen(self.model))

    def save(self, folder, meta: dict) -> Path:
        return save_checkpoint(self.model, folder, {"policy": "tiny_gpt", **meta})
