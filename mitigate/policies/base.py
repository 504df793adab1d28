"""What a policy is, and the policy registry.

A policy samples continuations of token contexts, scores given continuations under any contexts
(the student prompt, or a teacher context with a demonstration), makes a frozen copy of itself and
saves/loads checkpoints. Objectives and recipes use only this interface; model internals and
special tokens stay inside each implementation. Register a new one with

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
from mitigate.core.registry import Registry

POLICIES = Registry("policy")
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
        """Full-vocabulary log-probs [B, T, V] at each continuation position (grad if enabled)."""

    def completion_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """1 on generated tokens up to and including the end of sequence, 0 after."""

    def frozen_copy(self) -> Policy:
        """A no-grad, eval-mode copy (frozen reference, EMA teacher)."""

    def save(self, folder: str | Path, meta: dict) -> Path:
        """Write weights and `meta` atomically into `folder`."""


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
    target = POLICIES.get(name, f"{ckpt / META_FILE}: policy").target
    try:
        return target.load(ckpt, device), meta
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"could not load the {name} checkpoint '{ckpt}': {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e


def build_policy(model_cfg, task):
    """A freshly initialised policy of the registered kind `model_cfg.name` for `task`."""
    return POLICIES.get(model_cfg.name, "model.name").target.build(model_cfg, task)
