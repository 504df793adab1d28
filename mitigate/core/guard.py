"""The non-finite guard of the training loops (`train.on_nonfinite`, `pretrain.on_nonfinite`).

A loss term, the gradient norm or the weights that stop being finite end the run with a
`NonFiniteError` naming the step and the terms (`stop`, the default: the command exits with
status 3 and the last good resume checkpoint stays in `OUT.partial`), or drop that step's update
and log it (`skip`).
"""

from __future__ import annotations

import math

import torch

EXIT_NONFINITE = 3  # the CLI's exit status for a run stopped by the guard


class NonFiniteError(RuntimeError):
    """A run stopped on a non-finite loss term, gradient or weight."""

    exit_code = EXIT_NONFINITE
    gives_resume_advice = True  # the message says how to go on: `io.resumable_run` adds no generic note

    def __init__(self, message: str, step: int, terms: dict[str, float]):
        super().__init__(message)
        self.step, self.terms = step, dict(terms)


def nonfinite(values: dict[str, float]) -> dict[str, float]:
    """The entries of `values` that are NaN or infinite."""
    return {k: v for k, v in values.items() if not math.isfinite(v)}


def describe(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def nonfinite_message(loop: str, step: int, bad: dict[str, float], checkpoint: str | None, option: str) -> str:
    """The error of a run stopped at `step`: which terms, where the last good checkpoint is, and
    what can be done, each way one that works: a resume may change `option` (`core.resume.
    RESUME_MUTABLE`) but not the learning rate, which needs a fresh start."""
    section = option.split(".")[0]
    if checkpoint:
        return (f"{loop} stopped at step {step}: non-finite {describe(bad)}; the last good checkpoint (step "
                f"{checkpoint}) is kept. To go on from it, rerun the same command with --resume --set {option}=skip "
                f"(steps with a non-finite value are then dropped and logged); to lower {section}.lr instead, start "
                "over with --overwrite (a resume keeps every other setting)")
    return (f"{loop} stopped at step {step}: non-finite {describe(bad)}; no checkpoint was written before it (see "
            f"{section}.save_every). Rerun with a lower {section}.lr, or with --set {option}=skip to drop such steps "
            "(logged)")


def check_weights(model: torch.nn.Module, step: int, loop: str, checkpoint: str | None, option: str) -> None:
    """Refuse to save weights that are not finite: a checkpoint is only ever a good one."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        terms = {f"weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})": float("nan")}
        raise NonFiniteError(nonfinite_message(loop, step, terms, checkpoint, option), step, terms)
