"""The registries of objectives, regularizers, tasks, policies and embedders, each with the manifest
of its built-in names: name -> the module (in the registry's package) whose import registers it.

This module imports nothing but `mitigate.core`, so a config can check every registered name, and
answer a typo with the closest name and the registered list, before torch or transformers load
(`mitigate.config`). A built-in's module is imported the first time its entry is needed
(`Registry.get`); a plugin's names are known once the plugin is imported. Each package re-exports
its registry and decorator (`mitigate.objectives.register_objective`, ...). A new built-in is a
module that registers itself plus one line here (`tests/unit/test_registries.py` checks that every
line names the module that registers it, and that every built-in registration has a line).
"""

from __future__ import annotations

from mitigate.core.registry import Registry

OBJECTIVES = Registry("objective", "mitigate.objectives", {
    name: name for name in ("grpo", "grpo_negative", "grpo_passk", "grpo_unlikely", "rft", "sdsd", "sdsd_anticopy",
                            "sdsd_cmi", "sdsd_interp", "sdsd_marginal")})
REGULARIZERS = Registry("regularizer", "mitigate.regularizers", {"entropy": "entropy", "ot": "ot", "replay": "replay"})
TASKS = Registry("task", "mitigate.tasks", {"graph": "graph", "sciqa": "sciqa"})
POLICIES = Registry("policy", "mitigate.policies", {"tiny_gpt": "tiny_gpt", "hf": "hf"})
EMBEDDERS = Registry("embedder", "mitigate.metrics", {"tfidf": "semantic", "minilm": "semantic"})

__all__ = ["EMBEDDERS", "OBJECTIVES", "POLICIES", "REGULARIZERS", "TASKS"]
