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
    what to do."""
    kept = (f"the last good checkpoint (step {checkpoint}) is kept" if checkpoint
            else "no checkpoint was written before it (see save_every)")
    return (f"{loop} stopped at step {step}: non-finite {describe(bad)}; {kept}. Lower the learning rate, or set "
            f"{option}=skip to drop such steps (logged)")


def check_weights(model: torch.nn.Module, step: int, loop: str, checkpoint: str | None, option: str) -> None:
    """Refuse to save weights that are not finite: a checkpoint is only ever a good one."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        terms = {f"weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})": float("nan")}
        raise NonFiniteError(nonfinite_message(loop, step, terms, checkpoint, option), step, terms)
