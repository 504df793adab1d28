"""Terms added to any objective, one file each, registered by name (see `base.py`)."""

from mitigate.regularizers import entropy, ot, replay  # noqa: F401  (registration)
from mitigate.regularizers.base import REGULARIZERS, register_regularizer

__all__ = ["REGULARIZERS", "register_regularizer"]
