"""Tasks: prompts, a verifier with concept labels, splits, and demonstration contexts."""

from mitigate.tasks.graph import GraphParams, GraphTask


def make_task(params) -> GraphTask:
    if isinstance(params, GraphParams):
        return GraphTask(params)
    raise TypeError(f"no task for parameters of type {type(params).__name__}; known: GraphParams")


__all__ = ["GraphParams", "GraphTask", "make_task"]
