"""Training signals, one file each, registered by name. See `mitigate.objectives.base` for what an
objective receives and `mitigate.objectives.teacher` for the shared self-distillation teacher."""

from mitigate.objectives import (  # noqa: F401  (registration)
    grpo,
    grpo_negative,
    grpo_passk,
    grpo_unlikely,
    rft,
    sdsd,
    sdsd_anticopy,
    sdsd_cmi,
    sdsd_interp,
    sdsd_marginal,
)
from mitigate.objectives.base import OBJECTIVES, Batch, Context, register_objective
from mitigate.objectives.teacher import Teacher

__all__ = ["OBJECTIVES", "Batch", "Context", "Teacher", "register_objective"]
