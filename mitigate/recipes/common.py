"""What the recipes share: the record stored beside every checkpoint."""

from __future__ import annotations

from mitigate import config as C


def checkpoint_record(cfg: C.Config, method: str, policy) -> dict:
    """Stored as the checkpoint's mitigate.json: enough to rebuild its task and evaluate it."""
    n_params = sum(p.numel() for p in policy.model.parameters())
    return {"method": method, "n_params": n_params, "task": C.to_dict(cfg.task), "config": C.to_dict(cfg)}


def same_task(checkpoint_task: dict | None, cfg: C.Config) -> bool:
    """Whether a checkpoint was made on this config's task (records from before the task
    registry carry no `name`: they are graph tasks)."""
    if checkpoint_task is None:
        return False
    return {"name": "graph", **checkpoint_task} == C.to_dict(cfg.task)
