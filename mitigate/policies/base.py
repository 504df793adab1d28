"""What a policy is, and the policy registry.

A policy samples continuations of token contexts, scores given continuations under any contexts
(the student prompt, or a teacher context with a demonstration), makes a frozen copy of itself and
saves/loads checkpoints. Objectives and recipes use only this interface; model internals and
special tokens stay inside each implementation.

Scoring never needs the [B, T, V] log-probs. `policy.scores(contexts, tokens, mask)` runs one
forward and returns a `Scores`: what the per-token quantities of those completions are computed
from, namely each token's log-prob, the full-vocabulary divergence to another `Scores` (a
stop-gradient target: a teacher, the frozen reference, a mixture of teachers) and the entropy,
each [B, T]. A policy with a small vocabulary keeps the [B, T, V] log-probs (`FullScores`, the
graph task's `tiny_gpt`); the `hf` policy keeps the last hidden states and computes these in
chunks of positions, exactly (`mitigate.policies.chunked.HiddenScores`). A policy that defines
only `logprobs` gets `FullScores` of it (`scores_of`), so the three methods below are optional
to implement. Register a new one with

    @register_policy("my_policy", MyPolicyConfig)   # config Section with `name: str = "my_policy"`
    class MyPolicy:
        @classmethod
        def build(cls, cfg: MyPolicyConfig, task) -> "MyPolicy": ...     # fresh weights for a task
        @classmethod
        def load(cls, folder, device="cpu") -> "MyPolicy": ...           # from `save`

and select it with `model: {name: my_policy, <fields>}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from mitigate.core.io import InputError, check_safetensors, read_json
from mitigate.core.registry import UnknownName, plugin_hint
from mitigate.ops import divergence_with, gather_tokens, log_mixture, token_divergence, token_entropy
from mitigate.registries import POLICIES

register_policy = POLICIES.register

META_FILE = "mitigate.json"  # every checkpoint folder: {"policy": name, "task": ..., "config": ...}


class CheckpointError(FileNotFoundError):
    """A missing or incomplete checkpoint folder."""


@dataclass
class Samples:
    tokens: torch.Tensor  # [N, T] generated tokens, padding after the end of sequence
    mask: torch.Tensor  # [N, T] 1 up to and including the end-of-sequence token
    token_entropy: torch.Tensor  # [N] mean entropy (nats) of the sampling distribution per token


@runtime_checkable
class Policy(Protocol):
    model: torch.nn.Module  # the trainable module (what the optimizer and accelerate see)

    def sample(self, contexts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
               generator: torch.Generator | None = None, batch_size: int = 4096, progress=None) -> Samples:
        """Ancestral samples, one per context (repeat a context for several)."""

    def logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probs [B, T, V] at each continuation position (grad if enabled).
        Materialises [B, T, V]: training uses `scores` instead."""

    def scores(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> Scores:
        """One forward over the completions `tokens` [B, T] (`mask` [B, T] marks real positions) after
        `contexts`: the `Scores` every per-token quantity is computed from. With grad enabled they
        carry the policy's graph; under no-grad they are a target that an optimizer step on the
        policy does not move (the training loop keeps teacher targets for a whole step)."""

    def token_logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T] log p(y_t | context, y_<t) of the given tokens (grad if enabled):
        `scores(...).token_logprobs()`."""

    def divergence(self, other: Policy, contexts: list[list[int]], other_contexts: list[list[int]],
                   tokens: torch.Tensor, mask: torch.Tensor, kind: str = "reverse_kl") -> torch.Tensor:
        """[B, T] full-vocabulary divergence `kind` (`mitigate.ops.DIVERGENCES`) between this policy
        after `contexts` (grad if enabled) and `other` after `other_contexts` (no-grad, eval mode: a
        stop-gradient target) on the same completion tokens: `policy_divergence`."""

    def completion_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 on generated tokens up to and including the end of sequence, 0 after."""

    def frozen_copy(self) -> Policy:
        """A no-grad, eval-mode copy (frozen reference, EMA teacher)."""

    def save(self, folder: str | Path, meta: dict) -> Path:
        """Write weights and `meta` atomically into `folder`."""


@runtime_checkable
class Scores(Protocol):
    """Per-token quantities of B completions [B, T] under one policy and one context per row. Values
    at positions where the mask is 0 are unspecified (0 for `HiddenScores`): aggregate with the mask."""

    def token_logprobs(self) -> torch.Tensor:
        """[B, T] log-prob of each completion token."""

    def divergence(self, target: Scores, kind: str = "reverse_kl", **options) -> torch.Tensor:
        """[B, T] full-vocabulary divergence between these scores and `target` (same tokens and mask;
        no gradient flows into `target`), conventions of `mitigate.ops.token_divergence`. Optional
        keyword `options` (`alpha` of kind "gjsd", `topk` > 0 with `topk_of`: the top-k-with-tail
        form, `mitigate.ops.divergence_with`) are passed only when a caller sets them, so a `Scores`
        without them serves every default."""

    def entropy(self) -> torch.Tensor:
        """[B, T] entropy (nats) of the next-token distribution at each position."""

    def materialise(self) -> torch.Tensor:
        """The [B, T, V] log-probs (with grad when the scores have it). For code written against the
        full tensor only: the memory the rest of this interface exists to avoid."""

    def rows(self, lo: int, hi: int) -> Scores:
        """The scores of completions lo..hi-1 (optional: the teacher scores its M demonstration
        columns in one forward when the policy's `Scores` have it)."""


class FullScores:
    """`Scores` from the [B, T, V] log-probs themselves: the simple path of a small vocabulary, and
    what `scores_of` gives a policy that defines only `logprobs`. Every method is the `mitigate.ops`
    function of the full tensor."""

    def __init__(self, logprobs: torch.Tensor, tokens: torch.Tensor):
        self.logprobs, self.tokens = logprobs, tokens.to(logprobs.device)

    def token_logprobs(self) -> torch.Tensor:
        return gather_tokens(self.logprobs, self.tokens)

    def divergence(self, target: Scores, kind: str = "reverse_kl", **options) -> torch.Tensor:
        if not options:
            return token_divergence(self.logprobs, target.materialise().detach(), kind)
        return divergence_with(self.logprobs, target.materialise().detach(), kind, **options)

    def entropy(self) -> torch.Tensor:
        return token_entropy(self.logprobs)

    def materialise(self) -> torch.Tensor:
        return self.logprobs

    def rows(self, lo: int, hi: int) -> FullScores:
        return FullScores(self.logprobs[lo:hi], self.tokens[lo:hi])

    @classmethod
    def mixture(cls, targets: list[FullScores], log_weights: torch.Tensor) -> FullScores:
        """The mixture sum_m w_m p_m at each position, log-weights [M, B, T] (`ops.log_mixture`)."""
        stacked = torch.stack([t.materialise() for t in targets])
        return cls(log_mixture(log_weights, stacked), targets[0].tokens)

    @classmethod
    def geometric(cls, targets: list[Scores], weights: list[float]) -> FullScores:
        """The renormalised geometric mixture softmax(sum_m w_m log p_m) at each position (weights summing
        to 1): what `sdsd_interp`'s teacher is."""
        logits = sum(w * t.materialise().detach() for w, t in zip(weights, targets))
        return cls(torch.log_softmax(logits, -1), targets[0].tokens)


def scores_of(policy, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> Scores:
    """`policy.scores(...)`, or `FullScores` of `policy.logprobs(...)` for a policy without `scores`."""
    scores = getattr(policy, "scores", None)
    if scores is not None:
        return scores(contexts, tokens, mask)
    return FullScores(policy.logprobs(contexts, tokens, mask), tokens)


def target_scores(policy, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> Scores:
    """The scores of `policy` as a stop-gradient target: no-grad, eval mode (dropout off)."""
    model = policy.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return scores_of(policy, contexts, tokens, mask)
    finally:
        model.train(was)


def mixture(targets: list[Scores], log_weights: torch.Tensor) -> Scores:
    """The mixture of M targets on the same completions, weights exp(log_weights) [M, B, T] summing
    to 1 over M at each position: `type(targets[0]).mixture` (every built-in `Scores` has one)."""
    return type(targets[0]).mixture(targets, log_weights)


def geometric_mixture(targets: list[Scores], weights: list[float]) -> Scores:
    """The renormalised geometric mixture softmax(sum_m w_m log p_m) of M stop-gradient targets on the
    same completions (`type(targets[0]).geometric`: `FullScores`, and `HiddenScores`, whose
    `GeometricTarget` computes it per chunk)."""
    geometric = getattr(type(targets[0]), "geometric", None)
    if geometric is None:
        raise NotImplementedError(f"{type(targets[0]).__name__} has no geometric mixture (sdsd_interp's teacher); "
                                  "use a policy with FullScores (tiny_gpt)")
    return geometric(targets, weights)


def policy_token_logprobs(policy, contexts: list[list[int]], tokens: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """`Policy.token_logprobs` for any policy: [B, T] from `scores_of`."""
    return scores_of(policy, contexts, tokens, mask).token_logprobs()


def policy_divergence(policy, other, contexts: list[list[int]], other_contexts: list[list[int]],
                      tokens: torch.Tensor, mask: torch.Tensor, kind: str = "reverse_kl") -> torch.Tensor:
    """`Policy.divergence` for any policy: `policy` after `contexts` (grad if enabled) against
    `other` after `other_contexts` as a stop-gradient target, [B, T]."""
    target = target_scores(other, other_contexts, tokens, mask)
    return scores_of(policy, contexts, tokens, mask).divergence(target, kind)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether a training-mode forward of `model` draws dropout masks (a module or an attention rate)."""
    config = getattr(getattr(model, "module", model), "config", None)
    rates = [getattr(config, k, 0.0) or 0.0 for k in ("attention_dropout", "attn_pdrop")]
    return any(r > 0 for r in rates) or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def distinct_rows(model: torch.nn.Module, contexts: list[list[int]], tokens: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(first row of each distinct (context, tokens, mask), row -> its distinct row), or (None, None)
    when every row is distinct or `model` has dropout on (then repeats must draw their own masks).

    A group's rollouts repeat each other, more so as training concentrates the policy (half the
    rows of a trained GRPO group of 8 at the paper preset), and so do their teacher contexts. Each
    distinct row runs through the model once and the repeats index its output: the forward values
    are the same, and autograd sums the repeats' gradients before the weight-gradient matmul
    instead of inside it (a different float summation order: weights agree to ~3e-8 after two
    steps, tests/e2e/test_same_weights.py)."""
    if model.training and has_dropout(model):
        return None, None
    keys: dict[tuple, int] = {}
    first, rows = [], []
    for i, key in enumerate(zip(map(tuple, contexts), map(tuple, tokens.tolist()), map(tuple, mask.tolist()))):
        if key not in keys:
            keys[key] = len(first)
            first.append(i)
        rows.append(keys[key])
    if len(first) == len(rows):
        return None, None
    return torch.as_tensor(first), torch.as_tensor(rows)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder holding `checkpoint/`."""
    path = Path(path)
    for cand in (path, path / "checkpoint"):
        if (cand / META_FILE).is_file():
            return cand
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: '{path}' does not exist")
    raise CheckpointError(f"no checkpoint in '{path}': expected {META_FILE} and the weights in it "
                          f"or in '{path / 'checkpoint'}'")


def checkpoint_meta(path: str | Path) -> dict:
    """The checkpoint's record (`mitigate.json`), checked: a truncated or corrupt file, or one that is
    not a record of this package, is a `CheckpointError` naming it."""
    file = resolve_checkpoint(path) / META_FILE
    try:
        meta = read_json(file, "checkpoint record")
    except InputError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint record '{file}' must hold a JSON object, got {type(meta).__name__}")
    for key in ("task", "config"):
        if key in meta and not isinstance(meta[key], dict):
            raise CheckpointError(f"checkpoint record '{file}': '{key}' must be a mapping, got {meta[key]!r}")
    return meta


def check_checkpoint_files(folder: Path) -> None:
    """Every JSON file of a checkpoint parses and every safetensors file is whole, before a library
    reads them (a truncated download or a disk-full write gives a message, not a traceback)."""
    for f in sorted(folder.iterdir()):
        try:
            if f.suffix == ".json":
                read_json(f, "checkpoint file")
            elif f.suffix == ".safetensors":
                check_safetensors(f)
        except InputError as e:
            raise CheckpointError(str(e)) from e


def load_policy(path: str | Path, device="cpu"):
    """(policy, meta) from a checkpoint written by any registered policy."""
    ckpt = resolve_checkpoint(path)
    meta = checkpoint_meta(ckpt)
    check_checkpoint_files(ckpt)
    name = meta.get("policy", "tiny_gpt")  # checkpoints written before the registry existed
    try:
        target = POLICIES.get(name, f"{ckpt / META_FILE}: policy").target
    except UnknownName as e:
        raise CheckpointError(f"{e}{plugin_hint(e)}") from e
    try:
        policy = target.load(ckpt, device)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"could not load the {name} checkpoint '{ckpt}': {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    check_finite_weights(policy, ckpt)
    return policy, meta


def check_finite_weights(policy, ckpt: Path) -> None:
    """Refuse weights that hold NaN or infinity (a well-formed file of a diverged or damaged run):
    sampling from them fails deep in torch, and training from them cannot recover."""
    module = getattr(policy, "model", None)
    if not isinstance(module, torch.nn.Module):
        return
    named = list(module.named_parameters())
    bad = [n for n, p in named if not bool(torch.isfinite(p).all())]
    if bad:
        raise CheckpointError(f"the weights in '{ckpt}' are not finite: {len(bad)} of {len(named)} tensors hold NaN "
                              f"or infinity ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the checkpoint "
                              "comes from a diverged run or is damaged, so use another one")


def build_policy(model_cfg, task):
    """A freshly initialised policy of the registered kind `model_cfg.name` for `task`."""
    return POLICIES.get(model_cfg.name, "model.name").target.build(model_cfg, task)
