"""Training signals, one file each, registered by name. See `mitigate.objectives.base` for what an
objective receives and `mitigate.objectives.teacher` for the shared self-distillation teacher. The
built-ins are listed in `mitigate.registries` and imported the first time one is looked up."""

from mitigate.objectives.base import OBJECTIVES, Batch, Context, register_objective
from mitigate.objectives.teacher import Teacher

__all__ = ["OBJECTIVES", "Batch", "Context", "Teacher", "register_objective"]
