"""Terms added to any objective, one file each, registered by name (see `base.py`). The built-ins
are listed in `mitigate.registries` and imported the first time one is looked up."""

from mitigate.regularizers.base import REGULARIZERS, register_regularizer

__all__ = ["REGULARIZERS", "register_regularizer"]
