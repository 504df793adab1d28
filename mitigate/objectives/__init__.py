"""Training signals, one file each, registered by name (see mitigate.registry)."""

from mitigate.objectives import grpo, sdsd  # noqa: F401  (registration side effects)
