"""Training signals, one file each, registered by name. See `mitigate.objectives.base` for what an
objective receives and `mitigate.objectives.teacher` for the shared self-distillation teacher."""

from mitigate.objectives import grpo, sdsd, sdsd_anticopy, sdsd_cmi, sdsd_marginal  # noqa: F401  (registration)
from mitigate.objectives.base import OBJECTIVES, Batch, Context, register_objective
from mitigate.objectives.teacher import Teacher

__all__ = ["OBJECTIVES", "Batch", "Context", "Teacher", "register_objective"]
