"""The policy: a small GPT-2 style causal LM built from a `transformers` config (no download),
a batched KV-cache sampler, batched log-prob scoring of continuations under arbitrary contexts
(prompt or demonstration-prefixed teacher context), and safetensors checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.cache_utils import DynamicCache

from mitigate.tasks.graph import BOS, EOS, PAD

CHECKPOINT_FILES = ("config.json", "model.safetensors", "mitigate.json")


def build_model(model_cfg, vocab_size: int, n_positions: int = 32) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=model_cfg.n_embd,
        n_layer=model_cfg.n_layer, n_head=model_cfg.n_head,
        resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout, attn_pdrop=model_cfg.dropout,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        activation_function="gelu_pytorch_tanh",  # the fused kernel of GPT-2's tanh GELU: ~20% faster on CPU
    )
    return GPT2LMHeadModel(config)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- padding helpers

def left_pad(seqs: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: (tokens [B, L], mask [B, L])."""
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            tokens[i, width - len(s):] = torch.as_tensor(s)
            mask[i, width - len(s):] = 1
    return tokens.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def completion_mask(tokens: torch.Tensor) -> torch.Tensor:
    """1 on generated tokens up to and including the first EOS, 0 after it."""
    is_eos = (tokens == EOS).long()
    after = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after).long()


# ----------------------------------------------------------------------------- sampling

@dataclass
class Samples:
    tokens: torch.Tensor  # [N, T] generated tokens, PAD after EOS
    mask: torch.Tensor  # [N, T] 1 up to and including EOS
    token_entropy: torch.Tensor  # [N] mean entropy (nats) of the sampling distribution per token


@torch.no_grad()
def sample(model, contexts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, batch_size: int = 4096, progress=None) -> Samples:
    """Ancestral sampling with a KV cache, batched. Stops a batch once every row emitted EOS.

    Contexts may differ in length: they are left-padded and positions follow the mask, so a
    row's samples do not depend on what it was batched with (up to float rounding)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if not contexts:
        empty = torch.zeros((0, max_new_tokens), dtype=torch.long)
        return Samples(tokens=empty, mask=empty.clone(), token_entropy=torch.zeros(0))
    outs, ents = [], []
    for lo in range(0, len(contexts), batch_size):
        tok, ent = _sample_batch(model, contexts[lo:lo + batch_size], max_new_tokens, temperature,
                                 generator, device)
        outs.append(tok)
        ents.append(ent)
        if progress is not None:
            progress.update(len(tok))
    model.train(was_training)
    tokens = torch.cat(outs)
    mask = completion_mask(tokens)
    tokens = tokens.masked_fill(mask == 0, PAD)
    return Samples(tokens=tokens, mask=mask, token_entropy=torch.cat(ents))


def _sample_batch(model, contexts, max_new_tokens, temperature, generator, device):
    # Callers repeat each context (GRPO groups, n samples per prompt), so the prompt runs through
    # the model once per distinct context; rows sharing it get a copy of its KV cache and logits.
    first: dict[tuple, int] = {}
    rows = torch.tensor([first.setdefault(tuple(c), len(first)) for c in contexts], device=device)
    u_ids, u_mask = left_pad(list(first), device)
    cache = DynamicCache()
    out = model(input_ids=u_ids, attention_mask=u_mask, position_ids=positions(u_mask), past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    if len(first) < len(rows):
        cache.batch_select_indices(rows)
    mask, pos = u_mask[rows], positions(u_mask)[rows]
    n = len(rows)
    logits = out.logits[rows, -1].float()
    next_pos = pos[:, -1:] + 1
    generated = torch.full((n, max_new_tokens), PAD, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    ent_sum = torch.zeros(n, device=device)
    n_tok = torch.zeros(n, device=device)
    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, -1)
        probs = logp.exp()
        ent_sum += torch.where(done, 0.0, -(probs * logp).sum(-1))
        n_tok += (~done).float()
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, PAD, nxt)
        generated[:, t] = nxt
        done |= nxt == EOS
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return generated.cpu(), (ent_sum / n_tok.clamp(min=1)).cpu()


# ----------------------------------------------------------------------------- scoring

def continuation_logprobs(model, contexts: list[list[int]], continuations: torch.Tensor,
                          cont_mask: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities `log p(. | context, y_<t)` at every continuation position.

    contexts: token lists (any lengths; left-padded here). continuations: [B, T] tokens with
    `cont_mask` [B, T] marking real positions. Returns [B, T, V] float32 (grad flows if enabled).
    """
    device = next(model.parameters()).device
    ctx, ctx_mask = left_pad(contexts, device)
    cont = continuations.to(device)
    ids = torch.cat([ctx, cont], 1)
    mask = torch.cat([ctx_mask, cont_mask.to(device).long()], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    width = ctx.shape[1]
    logits = out.logits[:, width - 1:-1].float()  # position i predicts token i+1
    return torch.log_softmax(logits, -1)


def gather_tokens(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p of the given tokens: [B, T, V] x [B, T] -> [B, T]."""
    return logprobs.gather(-1, tokens.to(logprobs.device).unsqueeze(-1)).squeeze(-1)


def sequence_logprob(model, contexts, continuations, cont_mask) -> torch.Tensor:
    """Sum of token log-probs of each continuation: [B]."""
    lp = gather_tokens(continuation_logprobs(model, contexts, continuations, cont_mask), continuations)
    return (lp * cont_mask.to(lp.device)).sum(-1)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(model, directory: str | Path, extra: dict) -> Path:
    """Atomically write `config.json`, `model.safetensors` and `mitigate.json` (task + config)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "mitigate.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
        for f in list(tmp.iterdir()):  # only the files we document
            if f.name not in CHECKPOINT_FILES:
                f.unlink()
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


class CheckpointError(FileNotFoundError):
    pass


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder holding `checkpoint/`."""
    path = Path(path)
    for cand in (path, path / "checkpoint"):
        if all((cand / f).is_file() for f in CHECKPOINT_FILES):
            return cand
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: '{path}' does not exist")
    raise CheckpointError(f"no checkpoint in '{path}': expected {', '.join(CHECKPOINT_FILES)} "
                          f"in it or in '{path / 'checkpoint'}'")


def load_checkpoint(path: str | Path, device="cpu") -> tuple[GPT2LMHeadModel, dict]:
    ckpt = resolve_checkpoint(path)
    model = GPT2LMHeadModel.from_pretrained(ckpt, local_files_only=True).to(device)
    model.eval()
    return model, json.loads((ckpt / "mitigate.json").read_text())


def clone_frozen(model) -> GPT2LMHeadModel:
    """A no-grad, eval-mode copy (frozen base model / EMA teacher)."""
    twin = GPT2LMHeadModel(model.config).to(next(model.parameters()).device)
    twin.load_state_dict(model.state_dict())
    twin.eval().requires_grad_(False)
    return twin
