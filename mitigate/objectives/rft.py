"""rft: rejection-sampling fine-tuning on the base model's distinct correct samples.

Each step, for every prompt x of the step, `samples` completions are drawn from the frozen base
(`ctx.reference_samples`, the "reference" random stream), the verifier keeps the correct ones and,
with `distinct`, duplicates are merged; the student is trained by likelihood on what is left:

    L = - mean over kept (x, y) of agg_t log pi(y_t | x, y_<t)

The student's own rollouts of the step are not used (the loop still draws and counts them; the
extra base samples are counted as reference generations in the budget). Fixed point without the
leash: pi(y | x) proportional on the correct set to the chance that y is among the kept samples,
w(y) = 1 - (1 - p0(y | x))^n with n = `samples` (distinct) or to p0(y | x) itself (all samples kept):
the base's ratios among correct outputs exactly, or flattened toward uniform where p0(y) n is not
small. The cheapest ratio-preserving row: no reward model, no teacher, one likelihood term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.ops import AGGREGATIONS, aggregate


@dataclass
class RFTConfig(Section):
    name: str = opt("rft", "registered objective name")
    samples: int = opt(8, "base-model samples per prompt each step", min=1)
    distinct: bool = opt(True, "merge duplicate correct samples of a prompt before training on them")
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)


def kept_samples(tokens, correct, prompts: list, n: int, distinct: bool) -> tuple[list, list]:
    """(contexts, token rows) of the correct samples, per prompt in order, duplicates merged when
    `distinct` (first occurrence kept)."""
    contexts, rows = [], []
    for k, q in enumerate(prompts):
        seen = set()
        for j in range(k * n, (k + 1) * n):
            if not correct[j]:
                continue
            key = tuple(tokens[j].tolist())
            if distinct and key in seen:
                continue
            seen.add(key)
            contexts.append(q.tokens)
            rows.append(torch.as_tensor(tokens[j]))
    return contexts, rows


@register_objective("rft", RFTConfig)
class RFT:
    """A class only to draw the step's base samples once across inner epochs."""

    def __init__(self):
        self._step, self._batch = None, None

    def state_dict(self, prompts: list) -> dict:
        """Nothing outlives a step (checkpoints fall between steps), so a resume is exact without state."""
        return {}

    def load_state_dict(self, state: dict, prompts: list) -> None:
        self._step, self._batch = None, None

    def __call__(self, batch: Batch, ctx: Context, cfg: RFTConfig) -> tuple[torch.Tensor, dict]:
        if self._step != ctx.step:
            tokens, correct, _ = ctx.reference_samples(batch.prompts, cfg.samples)
            contexts, rows = kept_samples(tokens, correct, batch.prompts, cfg.samples, cfg.distinct)
            self._step, self._batch = ctx.step, None
            if rows:
                toks = torch.stack(rows).to(batch.tokens.device)
                self._batch = (contexts, toks, ctx.policy.completion_mask(toks).float())
        if self._batch is None:  # no correct base sample for any prompt of the step
            return batch.zero_loss(), {"rft_kept": 0.0}
        contexts, toks, mask = self._batch
        logp = ctx.policy.scores(contexts, toks, mask).token_logprobs()
        loss = aggregate(-logp, mask, cfg.aggregation)
        return loss, {"rft_kept": float(len(toks)) / len(batch.prompts)}
