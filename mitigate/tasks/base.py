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

from mitigate.core.fields import ConfigError
from mitigate.registries import TASKS

register_task = TASKS.register

# What the self-teacher may see besides the prompt (`teacher_context` of SDSD-family configs), richest
# first: the whole demonstration, its first j tokens, its answer only, its answer plus the verifier's
# verdict on the rollout being scored, nothing (the plain prompt). `none` needs no task support; a
# task offers the others by listing them in `teacher_contexts` and accepting `kind` in `teacher_context`.
CONTEXT_KINDS = ("full", "partial", "answer", "answer_verdict", "none")


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
        """The context under which the self-teacher sees `demonstration` before `prompt` (kind `full`).
        `demonstration` is a completion's token ids, a 1-D integer numpy array as `verify` gets its rows.

        A task that offers more context kinds (`CONTEXT_KINDS`) lists them in a `teacher_contexts`
        attribute and accepts, after these two arguments, `kind` (default "full": exactly this
        context), `rollout_correct` (the verifier's verdict on the rollout the teacher scores, for
        `answer_verdict`) and the settings `context_tokens` / `context_fraction` (`partial`: the first
        j tokens, `partial_length`); for a kind it does not offer it raises `context_not_offered`.
        The graph and sciqa tasks are the examples."""

    def rollout_features(self, completions: np.ndarray, labels: np.ndarray, label_weight: float) -> np.ndarray:
        """[N, d] features for comparing completions (the `ot` regularizer's cost)."""

    def pretraining_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [N, L], loss_mask [N, L]) for pretraining a base model from scratch."""


# Optional, for tasks whose correct set is enumerable (the graph task; the ratio test needs it):
#     def correct_completions(self, prompt) -> tuple[np.ndarray, np.ndarray]:
#         """(tokens [P, T] of every completion the verifier accepts, EOS included; labels [P])."""


def offered_contexts(task) -> tuple[str, ...]:
    """The context kinds `task` builds: its `teacher_contexts` (`full` at least), plus `none`, which
    is the plain prompt and needs nothing from the task."""
    return tuple(dict.fromkeys([*getattr(task, "teacher_contexts", ("full",)), "none"]))


def context_not_offered(task, kind: str) -> ConfigError:
    """The error for a teacher context kind `task` does not build (raise it)."""
    name = getattr(task, "name", type(task).__name__)
    if kind not in CONTEXT_KINDS:
        return ConfigError(f"unknown teacher_context '{kind}'; allowed: {', '.join(CONTEXT_KINDS)}")
    return ConfigError(f"task '{name}' does not offer teacher_context '{kind}'; it offers: "
                       f"{', '.join(offered_contexts(task))}")


def partial_length(n: int, context_tokens: int = 0, context_fraction: float = 0.5) -> int:
    """j, the demonstration tokens a `partial` context keeps of n: `context_tokens` when > 0 (at most
    n), else floor(context_fraction * n)."""
    if context_tokens > 0:
        return min(int(context_tokens), n)
    return int(np.floor(context_fraction * n + 1e-9))


def make_task(params) -> Task:
    """The task a config section names (`params.name`)."""
    return TASKS.get(params.name, "task.name").target(params)
