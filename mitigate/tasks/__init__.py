"""Tasks: prompts per split, a verifier with labels, demonstration contexts. Built-ins register
on import; see `mitigate.tasks.base` for the protocol."""

from mitigate.tasks import graph  # noqa: F401  (registers the built-in task)
from mitigate.tasks.base import TASKS, Task, Vocab, make_task, register_task

__all__ = ["TASKS", "Task", "Vocab", "make_task", "register_task"]
