"""`recipes.train.step_loss`: the step's algorithm as a function (batch in, loss and scalars out),
callable from an ablation script: objective + kl_coef * anchor + sum coef_j * regularizer_j."""

from __future__ import annotations

import torch

from mitigate import config as C
from mitigate.objectives import OBJECTIVES
from mitigate.objectives.base import make_term
from mitigate.ops import aggregate, reverse_kl_anchor
from mitigate.recipes.train import step_loss
from mitigate.regularizers import REGULARIZERS
from tests.unit.test_field_rows_rl import toy_batch


def test_step_loss_is_objective_plus_anchor_plus_regularizers():
    tc = C.load(preset="smoke", overrides=["train.kl_coef=0.1",
                                           "train.regularizers=[{name: entropy, coef: 0.01}]"]).train
    batch, _ = toy_batch([1, 0, 0, 1, 1, 1, 0, 0], G=4)
    # a reference that differs from the student, so the anchor is not zero
    ref_lp = (batch.scores.logprobs.detach() + 0.5 * torch.randn_like(batch.scores.logprobs)).log_softmax(-1)
    from dataclasses import replace

    from mitigate.policies import FullScores

    batch = replace(batch, reference=FullScores(ref_lp, batch.tokens))
    objective = make_term(OBJECTIVES.get(tc.objective.name))
    regs = [(make_term(REGULARIZERS.get(r.name)), r) for r in tc.regularizers]
    loss, scalars, values, kl = step_loss(batch, None, objective, regs, tc)
    obj, _ = objective(batch, None, tc.objective)
    anchor, _ = reverse_kl_anchor(batch.divergence(batch.reference, "reverse_kl"), batch.token_logprobs(), batch.mask)
    reg, _ = regs[0][0](batch, None, regs[0][1])
    want = obj + 0.1 * aggregate(anchor, batch.mask, "token_mean") + 0.01 * reg
    torch.testing.assert_close(loss, want)
    assert set(values) == {f"objective ({tc.objective.name})", "kl_anchor", "regularizers[0] (entropy)"}
    assert scalars["kl_anchor_loss"] != 0 and kl.shape == batch.mask.shape and bool((kl >= -1e-6).all())
    k3 = C.build(C.TrainConfig, {**C.to_dict(tc), "kl_estimator": "k3"})
    assert step_loss(batch, None, objective, regs, k3, log_kl=False)[3] is None  # nothing computed for the log
