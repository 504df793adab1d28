"""A run's numbers do not depend on what ran before it in the process: an AcceleratorState left in
bf16 by another library (TRL's GRPOConfig defaults to bf16 on CPU) is not inherited by `train`,
which trains in the launcher's precision (float32 without `accelerate launch --mixed_precision`)."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from mitigate import config as C
from mitigate.recipes.train import train


def test_train_ignores_a_bf16_state_left_by_another_library(smoke_cfg, smoke_base, tmp_path):
    cfg = C.with_overrides(smoke_cfg, {"train.steps": 2})
    clean = train(cfg, smoke_base, tmp_path / "clean", quiet=True)
    AcceleratorState._reset_state(reset_partial_state=False)
    Accelerator(cpu=True, mixed_precision="bf16")  # what a Trainer with bf16=True leaves behind
    assert AcceleratorState().mixed_precision == "bf16"
    after = train(cfg, smoke_base, tmp_path / "after", quiet=True)
    assert AcceleratorState().mixed_precision == "no"
    a, b = (load_file(r / "checkpoint" / "model.safetensors") for r in (clean, after))
    assert all(torch.equal(a[k], b[k]) for k in a)
