"""What a task is, and the task registry.

A task owns its prompts, splits, verifier and demonstration format; nothing outside the task's own
module names its splits or tokens. Register a new one with

    @register_task("my_task", MyParams)       # MyParams: a config Section with `name: str = "my_task"`
    class MyTask:
        def __init__(self, params: MyParams): ...

and select it with `task: {name: my_task, <fields>}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mitigate.core.registry import Registry

TASKS = Registry("task")
register_task = TASKS.register


@dataclass(frozen=True)
class Vocab:
    """Token ids a token-level policy needs from its task (size and the special tokens)."""

    size: int
    pad: int
    bos: int
    eos: int


@runtime_checkable
class Prompt(Protocol):
    """One query: hashable (reference sets are keyed by prompt) with its context token ids."""

    @property
    def tokens(self) -> list[int]: ...


@runtime_checkable
class Task(Protocol):
    name: str
    params: Any  # the task's config section
    vocab: Vocab
    max_new_tokens: int
    train_split: str  # post-training prompts
    val_split: str  # model selection (and the training probe)
    test_split: str  # ID evaluation
    ood_splits: dict[str, str]  # result key -> split, named by what it tests (e.g. {"unseen": "ood_unseen"})

    def prompts(self, split: str) -> list:
        """The prompts of a split, in a fixed order."""

    def verify(self, prompts: list, completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(correct [N] bool, labels [N] int): a semantic label (graph: concept) of each correct
        completion, -1 for incorrect ones. `completions[i]` answers `prompts[i]`."""

    def teacher_context(self, prompt, demonstration) -> list[int]:
        """The context under which the self-teacher sees `demonstration` before `prompt`."""

    def rollout_features(self, completions: np.ndarray, labels: np.ndarray, label_weight: float) -> np.ndarray:
        """[N, d] features for comparing completions (the `ot` regularizer's cost)."""

    def pretraining_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [N, L], loss_mask [N, L]) for pretraining a base model from scratch."""


# Optional, for tasks whose correct set is enumerable (the graph task; the ratio test needs it):
#     def correct_completions(self, prompt) -> tuple[np.ndarray, np.ndarray]:
#         """(tokens [P, T] of every completion the verifier accepts, EOS included; labels [P])."""


def make_task(params) -> Task:
    """The task a config section names (`params.name`)."""
    return TASKS.get(params.name, "task.name").target(params)
