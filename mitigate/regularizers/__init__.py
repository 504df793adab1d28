"""Terms added to any objective, one file each, registered by name (see mitigate.registry)."""
