"""Training signals, one file each, registered by name (see mitigate.registry)."""

from mitigate.objectives import grpo, sdsd, sdsd_cmi, sdsd_marginal  # noqa: F401  (registration)
