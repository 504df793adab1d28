"""mitigate: reproduce and mitigate the diversity collapse of self-distillation with sampled
demonstrations (SDSD), and rank mitigations on pass@k and OOD accuracy.

The Python API for ablation scripts:

    import mitigate
    cfg = mitigate.load_config(preset="smoke", overrides=["train.lr=1e-4"])
    cfg.train.objective = {"name": "sdsd", "teacher": "ema"}     # validated on assignment
    base = mitigate.pretrain(cfg, "runs/base", quiet=True)
    run = mitigate.train(cfg, base, "runs/sdsd", quiet=True)
    res = mitigate.evaluate(run)                                  # a dict; pass out=... to write JSON
    mitigate.reproduce(cfg, "runs/cmp")

Heavy modules (torch, transformers) load on first use of a recipe, so `mitigate --version` and
`import mitigate.core` stay fast.
"""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("mitigate")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_API = {
    "Config": "mitigate.config", "TrainConfig": "mitigate.config", "EvalConfig": "mitigate.config",
    "PretrainConfig": "mitigate.config", "ReproduceConfig": "mitigate.config", "ConfigError": "mitigate.config",
    "load_config": "mitigate.config",
    "pretrain": "mitigate.recipes.pretrain", "train": "mitigate.recipes.train",
    "reproduce": "mitigate.recipes.reproduce",
    "evaluate": ("mitigate.recipes.evaluate", "evaluate_checkpoint"),
    "register_objective": "mitigate.objectives", "register_regularizer": "mitigate.regularizers",
    "register_task": "mitigate.tasks", "register_policy": "mitigate.policies",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mitigate' has no attribute '{name}'")
    module, attr = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
