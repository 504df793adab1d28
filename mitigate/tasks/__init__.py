"""Tasks: prompts per split, a verifier with labels, demonstration contexts. The built-ins are
listed in `mitigate.registries` and imported the first time one is looked up; see
`mitigate.tasks.base` for the protocol."""

from mitigate.tasks.base import TASKS, Task, Vocab, make_task, register_task

__all__ = ["TASKS", "Task", "Vocab", "make_task", "register_task"]
