"""Speed-ups leave training unchanged: two smoke training steps of grpo and of sdsd (from the
session's smoke base) end with the weights recorded in tests/fixtures/smoke_weights_reference.safetensors,
written by the revision before the training-loop speed-ups (e8ac642: it scored the old log-probs
in a separate no-grad forward; now they are the first pass's log-probs, detached).

Tolerance: 1e-6 absolute per weight. On one machine the weights are bit-identical (checked when
the fixture was written); across machines the float32 reductions of different CPU vector widths
(AVX2 / AVX512) may round differently, which two Adam steps of lr 3e-5 keep far below 1e-6.

    python tests/e2e/test_same_weights.py --regenerate   # only for a change meant to move training
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "smoke_weights_reference.safetensors"
METHODS = ("grpo", "sdsd")


def trained_weights(base, work: Path) -> dict[str, torch.Tensor]:
    from mitigate import config as C
    from mitigate.recipes.train import train

    out = {}
    for m in METHODS:
        cfg = C.load(preset="smoke", overrides=["train.steps=2", f"train.objective={{name: {m}}}"])
        run = train(cfg, base, work / m, quiet=True, method=m)
        out.update({f"{m}/{k}": v for k, v in load_file(run / "checkpoint" / "model.safetensors").items()})
    return out


def test_smoke_training_gives_the_reference_weights(smoke_base, tmp_path):
    reference = load_file(REFERENCE)
    got = trained_weights(smoke_base, tmp_path)
    assert set(got) == set(reference)
    worst = max((got[k] - reference[k]).abs().max().item() for k in reference)
    assert worst <= 1e-6, f"largest weight difference {worst:.3g}"
    # the check can fail: the weights did move away from the base in two steps
    from mitigate.policies import load_policy

    base_sd = load_policy(smoke_base)[0].model.state_dict()
    moved = max((got[f"grpo/{k}"] - base_sd[k]).abs().max().item() for k in base_sd if f"grpo/{k}" in got)
    assert moved > 1e-5


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    from mitigate import config as C
    from mitigate.recipes.pretrain import pretrain

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        base = pretrain(C.load(preset="smoke"), Path(d) / "base", quiet=True)
        save_file({k: v.contiguous() for k, v in trained_weights(base, Path(d)).items()}, str(REFERENCE))
    print(f"wrote {REFERENCE}")
