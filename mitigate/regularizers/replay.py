"""replay: plain likelihood training on the base model's own verified correct paths.

For prompt x, a reference set of correct base-model samples is drawn once (the same draw as the
`ot` regularizer's: `reference_samples` per prompt from the frozen base, kept for the run), and
each step `replay_paths` of them per prompt are scored by the student:

    R = - agg_t log pi(r_t | x, r_<t),   r ~ uniform over the prompt's correct base samples

It is the control for `ot` with `replay` > 0: the same extra data (the base's correct paths, their
extra generations and verifier calls, about as many extra gradient tokens) without the transport
potentials. Its fixed point alone is the base's correct distribution as sampled, p0(y | x, C)
up to the finite reference set, so it pulls toward base ratios whatever the objective does; a
mitigation that needs replay to win must beat objective + `replay`, not the objective alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context
from mitigate.ops import aggregate
from mitigate.regularizers.base import register_regularizer


@dataclass
class ReplayConfig(Section):
    name: str = opt("replay", "registered regularizer name")
    coef: float = opt(0.3, "weight of the negative log-likelihood of replayed base paths", min=0.0)
    reference_samples: int = opt(32, "base-model samples per prompt for the reference set", min=1)
    replay_paths: int = opt(8, "correct reference paths per prompt scored each step", min=1)


@register_regularizer("replay", ReplayConfig)
class Replay:
    """Instantiated once per run: holds each prompt's correct base paths (drawn the first time the
    prompt is seen) and this step's replay batch (fixed across inner epochs)."""

    def __init__(self):
        self.reference: dict = {}  # prompt -> tokens [R, T] of correct base samples
        self._step, self._batch = None, None

    def state_dict(self, prompts: list) -> dict[str, np.ndarray]:
        """The reference paths for a resume checkpoint, keyed by each prompt's position in `prompts`
        (the training pool), in the order they were drawn."""
        index = {q: i for i, q in enumerate(prompts)}
        out = {"order": np.array([index[q] for q in self.reference], dtype=np.int64)}
        out.update({f"tokens.{k}": tokens for k, tokens in enumerate(self.reference.values())})
        return out

    def load_state_dict(self, state: dict[str, np.ndarray], prompts: list) -> None:
        self.reference = {prompts[int(i)]: state[f"tokens.{k}"] for k, i in enumerate(state["order"])}

    def _paths(self, batch: Batch, ctx: Context, cfg: ReplayConfig):
        missing = [q for q in batch.prompts if q not in self.reference]
        if missing:
            n = cfg.reference_samples
            tokens, correct, _ = ctx.reference_samples(missing, n)
            for k, q in enumerate(missing):
                rows = slice(k * n, (k + 1) * n)
                self.reference[q] = tokens[rows][correct[rows]]
        contexts, rows = [], []
        for q in batch.prompts:
            toks = self.reference[q]
            for j in torch.randperm(len(toks), generator=ctx.generator)[:cfg.replay_paths].tolist():
                contexts.append(q.tokens)
                rows.append(torch.as_tensor(toks[j]))
        if not rows:
            return None
        tokens = torch.stack(rows).to(batch.tokens.device)
        return contexts, tokens, ctx.policy.completion_mask(tokens).float()

    def __call__(self, batch: Batch, ctx: Context, cfg: ReplayConfig) -> tuple[torch.Tensor, dict]:
        if self._step != ctx.step:
            self._step, self._batch = ctx.step, self._paths(batch, ctx, cfg)
        if self._batch is None:  # no prompt of this step has a correct base path
            return batch.zero_loss(), {"replay_paths": 0.0}
        contexts, tokens, mask = self._batch
        lp = ctx.policy.token_logprobs(contexts, tokens, mask)
        return -aggregate(lp, mask, "token_mean"), {"replay_paths": float(len(tokens))}
