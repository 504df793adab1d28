"""`hf`: any Hugging Face `AutoModelForCausalLM` checkpoint behind the `Policy` interface.

    model: {name: hf, path: /models/Qwen2.5-0.5B-Instruct, dtype: bfloat16, activation_checkpointing: true}

What it guarantees, because each silently changes results when left to library defaults:

- Sampling uses an explicit `GenerationConfig` (do_sample, temperature, top_k=0, top_p=1.0, no
  repetition penalty, ...). transformers fills every field left unset from the checkpoint's own
  `generation_config.json` (an instruct model's top_k=20, top_p=0.8) and then from global
  defaults (top_k=50), so during `generate` the model's generation config is swapped for ours:
  the sampled distribution is exactly `softmax(logits / temperature)`, the one the loss scores.
- Several end-of-sequence ids (an instruct model ends a turn with `<|im_end|>` and a document
  with `<|endoftext|>`): the tokenizer's, the model config's, the checkpoint's generation config's
  (its EOS ids only) and `eos_tokens` from the config. A completion ends at the first of any.
- Contexts are left-padded, the completion is appended as token ids (never decoded and
  re-tokenised), position ids come from the attention mask, and only the completion span is
  projected to the vocabulary (`logits_to_keep`). Training forwards pass `use_cache=False`.
- SDPA attention; activation checkpointing (`activation_checkpointing_enable`, or the older
  `gradient_checkpointing_enable` on transformers that lack it) when the config asks for it.
- The random stream: `sample` draws one seed per batch from the caller's generator and runs
  `generate` under a forked global RNG, so named streams stay reproducible.

`scores(...)` keeps the completions' last hidden states (`mitigate.policies.chunked.HiddenScores`):
per-token full-vocabulary divergences to a teacher, the log-probs of the completion tokens and the
entropies come from them in chunks of positions, without the [B, T, V] tensor; training uses
only these (`divergence(...)` and `token_logprobs(...)` are the one-call forms). `logprobs(...)`
keeps the protocol's full [B, T, V] path. `build_tiny_checkpoint` writes a tiny random Llama or
Qwen3 checkpoint with a locally trained tokenizer and a chat template, for tests and smoke runs.

`model.path: tiny:qwen3` (or `tiny:llama`) names that tiny checkpoint instead of a folder, and
`task.tokenizer: tiny:qwen3` its tokenizer: both are rebuilt on demand, deterministically (fixed
corpus, fixed init seed), into a temporary folder of the process, and loaded from there with the
same checks as any folder. A config that names `tiny:...` therefore holds no machine-specific path
and stays valid after its run folder moves; the checkpoints a run saves carry the weights and the
tokenizer themselves.
"""

from __future__ import annotations

import atexit
import copy
import inspect
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from mitigate.core.fields import ConfigError, Section, build, opt
from mitigate.core.io import atomic_dir
from mitigate.ops import DIVERGENCES
from mitigate.policies.base import (
    META_FILE,
    Samples,
    distinct_rows,
    policy_divergence,
    policy_token_logprobs,
    register_policy,
)
from mitigate.policies.chunked import APPROXIMATIONS, HiddenScores, chunked_token_logprobs
from mitigate.policies.tiny_gpt import left_pad, positions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TINY_ARCHS = ("llama", "qwen3")  # not qwen2: its AutoTokenizer swaps a custom tokenizer's pre-tokenizer
# A text whose ids differ when a tokenizer class rebuilds the pre-tokenizer of tokenizer.json
# (digit splitting, contractions, whitespace runs, non-ASCII): checked on every load.
PROBE_TEXT = "In 2024 there were 12345 cells, don't  stop\n\n\tend; x=3.14 é 漢字 <answer>B</answer>"


@dataclass
class HFConfig(Section):
    name: str = opt("hf", "registered policy name")
    path: str = opt("", "local folder of an AutoModelForCausalLM checkpoint and its tokenizer "
                        "(a hub name only with allow_download)")
    dtype: str = opt("float32", "weights and compute dtype (logits are upcast to fp32 for log-probs)",
                     choices=tuple(DTYPES))
    attn_implementation: str = opt("sdpa", "attention kernel", choices=("sdpa", "eager"))
    activation_checkpointing: bool = opt(False, "recompute layer activations in the backward (saves memory)")
    eos_tokens: list = opt([], "extra end-of-sequence tokens (strings), besides the tokenizer's and checkpoint's")
    divergence_approximation: str = opt("full", "policy.divergence: exact full vocabulary, or the teacher's "
                                                "top-k tokens plus a tail bucket", choices=APPROXIMATIONS)
    divergence_topk: int = opt(64, "k of the topk_tail approximation", min=1)
    divergence_chunk: int = opt(256, "positions per chunk in policy.divergence (peak memory ~ chunk x vocab)",
                                min=1)
    allow_download: bool = opt(False, "let transformers fetch `path` from the hub when it is not a local folder")


# ----------------------------------------------------------------------------- loading

@contextmanager
def quiet_transformers():
    """No progress bars from transformers (loading or writing shards) while mitigate owns the output."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def check_model_folder(path: str, allow_download: bool = False) -> None:
    """A clear error for a model path that cannot be loaded without a network."""
    if not path:
        raise ConfigError("model.path is empty: give the local folder of an AutoModelForCausalLM checkpoint")
    if str(path).startswith(TINY_PREFIX):
        tiny_arch(str(path))
        return
    folder = Path(path)
    if allow_download and not folder.exists():
        return  # a hub name: transformers resolves it
    if not folder.is_dir():
        raise ConfigError(f"model folder not found: '{path}' does not exist (model.path must be a local folder "
                          "holding config.json, the weights and the tokenizer; set model.allow_download=true "
                          "to fetch a hub name)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"'{path}' is not a transformers checkpoint: it has no config.json")


def load_tokenizer(path: str | Path, allow_download: bool = False):
    """The checkpoint's tokenizer, checked: it has a pad token, and the class AutoTokenizer picks
    encodes like the folder's own tokenizer.json (a `qwen2` config, for one, makes AutoTokenizer
    rebuild the pre-tokenizer, which silently changes ids of a custom tokenizer). `tiny:ARCH`: the
    tokenizer of the tiny checkpoint (`tiny_folder`)."""
    path = local_folder(path)
    if not allow_download and not Path(path).is_dir():
        raise ConfigError(f"tokenizer folder not found: '{path}' does not exist (a local folder holding the "
                          "tokenizer files, normally the model's own folder)")
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=not allow_download)
    if tok.pad_token_id is None:
        raise ConfigError(f"the tokenizer in '{path}' has no pad token; add one and save it, e.g. "
                          "tok.pad_token = '<|finetune_right_pad_id|>'; tok.save_pretrained(folder)")
    raw = Path(path) / "tokenizer.json"
    if raw.is_file():
        expected = Tokenizer.from_file(str(raw)).encode(PROBE_TEXT, add_special_tokens=False).ids
        got = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise ConfigError(f"AutoTokenizer loads '{path}' as {type(tok).__name__}, which encodes differently "
                              "from the folder's tokenizer.json (its model type replaces the pre-tokenizer); set "
                              '"tokenizer_class": "TokenizersBackend" in tokenizer_config.json')
    return tok


def as_id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def end_of_sequence_ids(tokenizer, model, extra_tokens: list) -> list[int]:
    """Every id that ends a completion: tokenizer, model config, the checkpoint's generation config
    (only its EOS ids; none of its sampling settings) and the configured extra tokens."""
    ids = as_id_list(tokenizer.eos_token_id) + as_id_list(model.config.eos_token_id)
    ids += as_id_list(getattr(model.generation_config, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for t in extra_tokens:
        if not isinstance(t, str) or t not in vocab:
            raise ConfigError(f"model.eos_tokens: {t!r} is not a token of the tokenizer")
        ids.append(vocab[t])
    if not ids:
        raise ConfigError("no end-of-sequence token: the tokenizer and the checkpoint define none; "
                          "set model.eos_tokens")
    return sorted(set(ids))


def enable_activation_checkpointing(model) -> None:
    # transformers 5 renamed the method; the old name is a deprecated alias there and the only one before.
    fn = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    fn()


def load_model(path: str | Path, cfg: HFConfig, device="cpu"):
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[cfg.dtype],
                                                     attn_implementation=cfg.attn_implementation,
                                                     local_files_only=not cfg.allow_download)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model.to(device)


# ----------------------------------------------------------------------------- sampling helpers

class SamplingRecorder(LogitsProcessor):
    """Watches `generate`'s decoding steps without changing them: the entropy of each step's sampling
    distribution softmax(logits / temperature) and the log-prob of each sampled token under it.

    Custom processors run before the temperature warper, so `scores` here are the raw logits (the
    explicit generation config adds no other processor)."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.entropy: list[torch.Tensor] = []  # per step: [N]
        self.token_logprobs: list[torch.Tensor] = []  # per step: [N], filled one step late
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:  # the token drawn at the previous step is now the last input id
            self.token_logprobs.append(self._last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        logp = torch.log_softmax(scores.float() / self.temperature, -1)
        p = logp.exp()
        self.entropy.append(-torch.special.xlogy(p, p).sum(-1))  # 0 log 0 = 0 for tokens of probability 0
        self._last = logp
        return scores

    def finish(self, last_tokens: torch.Tensor) -> None:
        if self._last is not None:
            self.token_logprobs.append(self._last.gather(-1, last_tokens[:, None]).squeeze(-1))
            self._last = None


@contextmanager
def explicit_generation_config(model, gen_cfg: GenerationConfig):
    """`generate` fills unset fields from `model.generation_config` (the checkpoint's sampling
    defaults): make ours the model's for the call, so nothing of the checkpoint's leaks in."""
    saved = model.generation_config
    model.generation_config = gen_cfg
    try:
        yield
    finally:
        model.generation_config = saved


def repeated_runs(contexts: list[list[int]]) -> int:
    """n when `contexts` is each distinct context repeated n times in a row (rollout groups), else 1."""
    runs, i = [], 0
    while i < len(contexts):
        j = i
        while j < len(contexts) and contexts[j] == contexts[i]:
            j += 1
        runs.append(j - i)
        i = j
    return runs[0] if runs and len(set(runs)) == 1 else 1


# ----------------------------------------------------------------------------- the policy

@register_policy("hf", HFConfig)
class HFPolicy:
    """A causal LM and its tokenizer. `wrapped` is what gradient forwards go through (the training
    loop may set it to the DDP-wrapped model); sampling and no-grad scoring use the bare `model`."""

    def __init__(self, model, tokenizer, cfg: HFConfig, eos_ids: list[int]):
        self.model = self.wrapped = model
        self.tokenizer, self.cfg, self.eos_ids = tokenizer, cfg, list(eos_ids)
        self.pad_id = int(tokenizer.pad_token_id)
        forward = inspect.signature(type(model).forward).parameters
        self.keeps_logits = "logits_to_keep" in forward  # older or exotic models compute every position
        for field in ("final_logit_softcapping", "logit_scale"):  # the chunked divergence assumes logits = W h + b
            if getattr(model.config, field, None) not in (None, 1.0):
                self.logit_transform = field
                break
        else:
            self.logit_transform = None

    # ---- construction
    @classmethod
    def from_folder(cls, folder: str | Path, cfg: HFConfig, device="cpu") -> HFPolicy:
        check_model_folder(str(folder), cfg.allow_download)
        folder = local_folder(folder)
        tokenizer = load_tokenizer(folder, cfg.allow_download)
        model = load_model(folder, cfg, device)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            raise ConfigError(f"'{folder}': the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                              f"{model.get_input_embeddings().weight.shape[0]}")
        return cls(model, tokenizer, cfg, end_of_sequence_ids(tokenizer, model, cfg.eos_tokens))

    @classmethod
    def build(cls, cfg: HFConfig, task) -> HFPolicy:
        """The checkpoint at `cfg.path` (an `hf` policy starts from trained weights, never from scratch;
        `tiny:ARCH` is the tiny random checkpoint of `tiny_folder`).
        A task that tokenizes text itself must use the same tokenizer: checked when it exposes one."""
        policy = cls.from_folder(cfg.path, cfg)
        task_tok = getattr(task, "tokenizer", None)
        if task_tok is not None and task_tok.get_vocab() != policy.tokenizer.get_vocab():
            raise ConfigError(f"the task's tokenizer differs from the one in model.path '{cfg.path}'; point "
                              "task.tokenizer at the model folder")
        return policy

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> HFPolicy:
        """A checkpoint written by `save`: weights and tokenizer from `folder`, settings from its record."""
        meta = json.loads((Path(folder) / META_FILE).read_text())
        section = {k: v for k, v in meta.get("config", {}).get("model", {}).items()}
        cfg = build(HFConfig, {**section, "name": "hf", "path": str(folder)}, "model")
        return cls.from_folder(folder, cfg, device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- sampling
    def generation_config(self, max_new_tokens: int, temperature: float = 1.0, n: int = 1) -> GenerationConfig:
        """The complete sampling specification: pure ancestral sampling at `temperature`, nothing else."""
        return GenerationConfig(
            do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
            forced_bos_token_id=None, forced_eos_token_id=None, min_length=0, min_new_tokens=None,
            max_new_tokens=int(max_new_tokens), num_beams=1, num_return_sequences=int(n), renormalize_logits=False,
            remove_invalid_values=False, eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id, use_cache=True, return_dict_in_generate=False)

    @torch.no_grad()
    def sample(self, contexts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
               generator: torch.Generator | None = None, batch_size: int = 4096, progress=None) -> Samples:
        """One completion per context (rows repeating a context n times in a row are sampled as n
        return sequences of one prompt). Returns tokens padded to `max_new_tokens` with the pad id
        after the first EOS, the completion mask, the mean per-token entropy of the sampling
        distribution, and `sampled_logprobs` [N, T]: each token's log-prob when it was drawn."""
        if not contexts:
            empty = torch.zeros((0, max_new_tokens), dtype=torch.long)
            out = Samples(tokens=empty, mask=empty.clone(), token_entropy=torch.zeros(0))
            out.sampled_logprobs = torch.zeros((0, max_new_tokens))
            return out
        n = repeated_runs(contexts)
        distinct = contexts[::n]
        per_batch = max(1, batch_size // n)  # whole groups per generate call
        was_training = self.model.training
        self.model.eval()
        tokens, entropy, logprobs = [], [], []
        try:
            for lo in range(0, len(distinct), per_batch):
                seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
                t, e, lp = self._sample_batch(distinct[lo:lo + per_batch], n, max_new_tokens, temperature, seed)
                tokens.append(t)
                entropy.append(e)
                logprobs.append(lp)
                if progress is not None:
                    progress.update(len(t))
        finally:
            self.model.train(was_training)
        tokens, logprobs = torch.cat(tokens), torch.cat(logprobs)
        mask = self.completion_mask(tokens)
        out = Samples(tokens=tokens.masked_fill(mask == 0, self.pad_id), mask=mask, token_entropy=torch.cat(entropy))
        out.sampled_logprobs = logprobs * mask  # an extra attribute: the protocol's Samples has no field for it
        return out

    def _sample_batch(self, contexts, n, max_new_tokens, temperature, seed):
        device = self.device
        ids, attn = left_pad(contexts, device, self.pad_id)
        gen_cfg = self.generation_config(max_new_tokens, temperature, n)
        recorder = SamplingRecorder(temperature)
        devices = [device] if device.type == "cuda" else []
        with explicit_generation_config(self.model, gen_cfg), torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            seqs = self.model.generate(input_ids=ids, attention_mask=attn, generation_config=gen_cfg,
                                       logits_processor=LogitsProcessorList([recorder]))
        new = seqs[:, ids.shape[1]:]
        recorder.finish(new[:, -1])
        steps = new.shape[1]
        tokens = torch.full((len(new), max_new_tokens), self.pad_id, dtype=torch.long)
        tokens[:, :steps] = new.cpu()
        mask = self.completion_mask(tokens)[:, :steps].float()
        ent = torch.stack(recorder.entropy, 1).cpu()[:, :steps]
        entropy = (ent * mask).sum(1) / mask.sum(1).clamp(min=1)
        logprobs = torch.zeros((len(new), max_new_tokens))
        logprobs[:, :steps] = torch.stack(recorder.token_logprobs, 1).cpu()[:, :steps]
        return tokens, entropy, logprobs

    def completion_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 on generated tokens up to and including the first end-of-sequence id (any of them), 0 after."""
        is_eos = torch.isin(tokens, torch.tensor(self.eos_ids, device=tokens.device)).long()
        return ((is_eos.cumsum(-1) - is_eos) == 0).long()

    # ---- scoring
    def _forward(self, module, contexts, tokens, mask, hidden: bool = False):
        """One forward over [left-padded context | completion]; returns (logits at the positions that
        predict the completion tokens [B, T, V], or the last hidden states there [B, T, H]). Repeated
        rows run once (`distinct_rows`)."""
        first, rows = distinct_rows(module, contexts, tokens, mask)
        if first is not None:
            out = self._forward(module, [contexts[i] for i in first], tokens[first], mask[first], hidden)
            return out[rows.to(out.device)]
        device = self.device
        ctx, ctx_mask = left_pad(contexts, device, self.pad_id)
        tokens = tokens.to(device)
        ids = torch.cat([ctx, tokens], 1)
        attn = torch.cat([ctx_mask, mask.to(device).long()], 1)
        width, length = ctx.shape[1], tokens.shape[1]
        span = torch.arange(width - 1, width - 1 + length, device=device)  # position i predicts token i + 1
        kwargs = dict(input_ids=ids, attention_mask=attn, position_ids=positions(attn), use_cache=False)
        if hidden:  # only one position goes through the output projection; the rest stays [B, T, H]
            out = module(**kwargs, output_hidden_states=True, **({"logits_to_keep": 1} if self.keeps_logits else {}))
            return out.hidden_states[-1][:, span]
        if self.keeps_logits:
            return module(**kwargs, logits_to_keep=span).logits
        return module(**kwargs).logits[:, span]

    def logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary fp32 log-probs [B, T, V] of the continuation positions (grad if enabled)."""
        module = self.wrapped if torch.is_grad_enabled() else self.model
        return torch.log_softmax(self._forward(module, contexts, tokens, mask).float(), -1)

    def completion_hidden(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (after the final norm) [B, T, H] at the positions predicting each token."""
        module = self.wrapped if torch.is_grad_enabled() else self.model
        return self._forward(module, contexts, tokens, mask, hidden=True)

    def scores(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> HiddenScores:
        """The completions' `Scores` from one forward: last hidden states [B, T, H] and the output
        projection (`HiddenScores`: token log-probs, divergences and entropies in chunks of
        `divergence_chunk` positions, never [B, T, V]). Under no-grad (a target) a trainable
        projection is copied, so the target stays that of these weights after an optimizer step."""
        self._check_plain_logits()
        hidden = self.completion_hidden(contexts, tokens, mask)
        weight, bias = self.output_projection() if torch.is_grad_enabled() else self._frozen_projection()
        return HiddenScores(hidden, mask.to(self.device).bool(), tokens.to(self.device), weight, bias,
                            self.cfg.divergence_chunk, self.cfg.divergence_approximation, self.cfg.divergence_topk)

    def _frozen_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output projection as a target may keep it: the parameters themselves when frozen, else a
        copy, shared by every target made before the weights next change (M teachers: one copy)."""
        weight, bias = self.output_projection()
        if not (weight.requires_grad or (bias is not None and bias.requires_grad)):
            return weight.detach(), None if bias is None else bias.detach()
        versions = (weight._version, None if bias is None else bias._version)  # in-place updates bump them
        cached = self.__dict__.get("_projection_copy")
        if cached is None or cached[0] is not weight or cached[1] != versions:
            cached = (weight, versions, weight.detach().clone(), None if bias is None else bias.detach().clone())
            self._projection_copy = cached
        return cached[2], cached[3]

    def token_logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p of each completion token [B, T] (0 where mask is 0), from hidden states in chunks of
        `divergence_chunk` positions: `gather(logprobs(...), tokens)` without the [B, T, V] tensor."""
        return policy_token_logprobs(self, contexts, tokens, mask)

    def pretraining_loss(self, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the target tokens (`loss_mask` 1; never the prompt) of right-padded
        rows [B, L], as `pretrain` uses it for a supervised warm-up. Each row attends up to its last
        target token (so a pad id that doubles as a real token, e.g. pad = EOS, is still attended
        inside the row); log-probs come from hidden states in chunks, without the [B, L, V] tensor."""
        self._check_plain_logits()
        device = self.device
        tokens, loss_mask = tokens.to(device), loss_mask.to(device)
        length = tokens.shape[1]
        last = length - 1 - loss_mask.flip(1).float().argmax(1)
        attn = (torch.arange(length, device=device)[None] <= last[:, None]).long()
        kwargs = {"logits_to_keep": 1} if self.keeps_logits else {}
        out = self.wrapped(input_ids=tokens, attention_mask=attn, use_cache=False, output_hidden_states=True,
                           **kwargs)
        keep = loss_mask[:, 1:].bool()  # position i predicts token i + 1
        hidden = out.hidden_states[-1][:, :-1][keep]
        weight, bias = self.output_projection()
        logp = chunked_token_logprobs(hidden, weight, tokens[:, 1:][keep], self.cfg.divergence_chunk, bias)
        return -logp.mean()

    def _check_plain_logits(self, *others: HFPolicy) -> None:
        for p in (self, *others):
            if p.logit_transform:
                raise NotImplementedError(f"chunked scoring needs logits = W h + b; this model applies "
                                          f"{p.logit_transform}")

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = self.model.get_output_embeddings()
        return head.weight, getattr(head, "bias", None)

    def divergence(self, teacher: HFPolicy, contexts: list[list[int]], teacher_contexts: list[list[int]],
                   tokens: torch.Tensor, mask: torch.Tensor, kind: str = "reverse_kl") -> torch.Tensor:
        """Per-token divergence [B, T] (0 where mask is 0) between this policy after `contexts` and
        `teacher` after `teacher_contexts`, on the same completion tokens: full vocabulary in chunks of
        `divergence_chunk` positions, or the top-k-with-tail approximation (`divergence_approximation`).
        Gradients flow into this policy only; the teacher runs under no-grad in eval mode."""
        if kind not in DIVERGENCES:
            raise ValueError(f"unknown divergence '{kind}'; allowed: {', '.join(DIVERGENCES)}")
        self._check_plain_logits(teacher)
        return policy_divergence(self, teacher, contexts, teacher_contexts, tokens, mask, kind)

    # ---- copies and checkpoints
    def frozen_copy(self) -> HFPolicy:
        twin = copy.deepcopy(self.model).eval().requires_grad_(False)
        return HFPolicy(twin, self.tokenizer, self.cfg, self.eos_ids)

    def save(self, folder: str | Path, meta: dict) -> Path:
        """Weights (safetensors), config, tokenizer and `mitigate.json`, atomically."""
        with atomic_dir(folder) as tmp, quiet_transformers():
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            record = {"policy": "hf", "eos_ids": self.eos_ids, **meta}
            (tmp / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        return Path(folder)


# ----------------------------------------------------------------------------- tiny checkpoints

SPECIAL_TOKENS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DEFAULT_CORPUS = (
    "Question: Which organelle makes most of the cell's energy? Options: A) nucleus B) mitochondrion "
    "C) ribosome D) vacuole. The answer is B. <answer>B</answer> \\boxed{B}",
    "Water boils at 100 degrees Celsius at sea level; ice melts at 0. Answer: (A)",
    "Plants absorb carbon dioxide and release oxygen during photosynthesis. The correct option is C.",
    "In 2024 there were 12345 measurements of 3.14, don't stop. Final answer: D",
)


def train_tokenizer(texts, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (any text encodes and decodes losslessly), with
    ChatML special tokens, a pad token, `<|im_end|>` as EOS and a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
                                   chat_template=CHAT_TEMPLATE)


TINY_PREFIX = "tiny:"
_TINY_FOLDERS: dict[str, Path] = {}  # arch -> this process's copy of the tiny checkpoint


def tiny_arch(spec: str) -> str:
    """The architecture named by `tiny:ARCH` (a clear error for an unknown one)."""
    arch = spec[len(TINY_PREFIX):]
    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny checkpoint '{spec}'; allowed: "
                          + ", ".join(TINY_PREFIX + a for a in TINY_ARCHS))
    return arch


def tiny_folder(spec: str) -> Path:
    """The folder of `tiny:ARCH`: `build_tiny_checkpoint(folder, ARCH)` with its defaults (the default
    corpus, seed 0), written once per process into a temporary folder removed at exit. Every build
    is identical (checked in the tests), so every process and every run sees the same model."""
    arch = tiny_arch(spec)
    if arch not in _TINY_FOLDERS or not (_TINY_FOLDERS[arch] / "config.json").is_file():
        root = Path(tempfile.mkdtemp(prefix="mitigate-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _TINY_FOLDERS[arch] = build_tiny_checkpoint(root / arch, arch)
    return _TINY_FOLDERS[arch]


def local_folder(path: str | Path) -> str | Path:
    """`path` itself, or the folder of a `tiny:ARCH` spec."""
    return tiny_folder(str(path)) if str(path).startswith(TINY_PREFIX) else path


def build_tiny_checkpoint(folder: str | Path, arch: str = "llama", texts=DEFAULT_CORPUS, vocab_size: int = 512,
                          hidden_size: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                          max_positions: int = 2048, seed: int = 0) -> Path:
    """Write a tiny randomly initialised Llama or Qwen3 checkpoint with a tokenizer trained on `texts`
    into `folder` (atomically). Two EOS ids: `<|im_end|>` (end of turn) and `<|endoftext|>`. Nothing
    is downloaded. Not qwen2: its AutoTokenizer class replaces a custom tokenizer's pre-tokenizer."""
    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny architecture '{arch}'; allowed: {', '.join(TINY_ARCHS)}")
    tokenizer = train_tokenizer(texts, vocab_size)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads, max_position_embeddings=max_positions, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    with atomic_dir(folder) as tmp, quiet_transformers():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(folder)
