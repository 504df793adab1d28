"""The regularizer registry. A regularizer has the objective's signature,
`(batch, ctx, cfg) -> (loss, scalars)`; its config has a `coef` and the loop adds `coef * loss`
to the objective. Scalars are logged as `<name>/<key>`. A term with per-run state is a class
(instantiated once per run, then called like a function); see `mitigate.regularizers.ot`. Such a
term offers `state_dict(prompts) -> {name: array}` and `load_state_dict(state, prompts)` (prompts
as positions in the training pool `prompts`) so that `--resume` restores it; a resume refuses a
stateful term without them (`mitigate.core.resume`)."""

from __future__ import annotations

from mitigate.registries import REGULARIZERS

register_regularizer = REGULARIZERS.register
