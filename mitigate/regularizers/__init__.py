"""Terms added to the objective, one file each, registered by name (see mitigate.registry)."""

from mitigate.regularizers import entropy, ot  # noqa: F401  (registration)
