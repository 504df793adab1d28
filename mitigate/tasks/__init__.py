"""Tasks: prompts per split, a verifier with labels, demonstration contexts. Built-ins register
on import; see `mitigate.tasks.base` for the protocol."""

from mitigate.tasks import graph, sciqa  # noqa: F401  (register the built-in tasks)
from mitigate.tasks.base import TASKS, Task, Vocab, make_task, register_task

__all__ = ["TASKS", "Task", "Vocab", "make_task", "register_task"]
