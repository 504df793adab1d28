"""The self-distillation teacher, shared by every SDSD-family objective.

The teacher is the policy conditioned on a correct demonstration y* of the same group:
`p(. | teacher_context(x, y*), y_<t)`, always under no-grad with dropout off. Its weights are

    live      the current student (the default: on-policy self-distillation)
    ema       an exponential moving average of the student (`ema_decay`), updated after each step
    base      the frozen initial model
    external  a frozen checkpoint named by `teacher_path` (a stronger base, a GRPO-trained model, any
              compatible hf checkpoint), loaded and checked on first use (`mitigate.objectives.external`)

What it sees besides the prompt is the objective's `teacher_context` (`tasks.base.CONTEXT_KINDS`),
built by the task from the drawn demonstration (`task.teacher_context(prompt, y*, kind=...)`):

    full            the whole demonstration (the default, the call every task has always offered)
    partial         its first j tokens (`context_tokens`, or floor(`context_fraction` x its length))
    answer          its answer only (graph: the path's goal-side end; sciqa: the option it commits to)
    answer_verdict  the answer plus the verifier's verdict on the rollout being scored (sciqa only)
    none            nothing: the plain prompt. No demonstration is drawn and every rollout has a target
                    (on-policy distillation), except with the live teacher, which is then the student
                    itself on its own context: the null, whose rows are all masked (demonstration -1),
                    so the distillation loss and its gradient are exactly zero

`demonstrations(batch, ctx, m)` draws m demonstrations per rollout from the correct rollouts of its
group (another one when there is one; `ops.pick_demonstrations`; other rules with `rule=`,
`mitigate.objectives.demos`) and returns the m teachers' `Scores` of the rollouts
(`mitigate.policies.base`): stop-gradient targets for `batch.divergence(teacher, kind)` [B, T],
with `teacher.token_logprobs()` [B, T] for sequence-level quantities. Nothing [B, T, V] is built
for a policy that does not need it (`hf` keeps hidden states). Draws and targets are made once per
step and reused across inner epochs, so every inner epoch distils toward the same targets (a target
does not move when the live weights do).
"""

from __future__ import annotations

import torch

from mitigate.core.resume import ResumeError
from mitigate.objectives import demos as demo_rules
from mitigate.objectives.external import load_external
from mitigate.ops import pick_demonstrations
from mitigate.policies.base import Scores, target_scores
from mitigate.tasks.base import CONTEXT_KINDS, context_not_offered, offered_contexts

TEACHERS = ("live", "ema", "base", "external")


class Teacher:
    def __init__(self, kind: str, policy, reference, ema_decay: float = 0.99, external=None):
        """`external`: the loaded weights of teacher `external` (else loaded from `teacher_path` on the
        first `demonstrations` call)."""
        if kind not in TEACHERS:
            raise ValueError(f"unknown teacher '{kind}'; allowed: {', '.join(TEACHERS)}")
        self.kind, self.policy, self.decay = kind, policy, ema_decay
        self.weights = {"live": policy, "base": reference, "ema": policy.frozen_copy() if kind == "ema" else None,
                        "external": external}[kind]
        self._cache: dict = {}
        self._extra: list[torch.Tensor] = []  # completions a rule adds beyond the batch (demo_rule buffer)
        self.buffer: demo_rules.DemoBuffer | None = None
        self._first_step: int | None = None
        self._splittable: bool | None = None  # whether the policy's Scores have `rows` (known after one call)

    def scores(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> Scores:
        """The teacher's `Scores` of `tokens` after `contexts`: no-grad, dropout off."""
        return target_scores(self.weights, contexts, tokens, mask)

    @torch.no_grad()
    def logprobs(self, contexts: list[list[int]], tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, V] teacher log-probs of `tokens` after `contexts`, dropout off. MATERIALISES the full
        tensor: objectives use `scores`."""
        return self.scores(contexts, tokens, mask).materialise()

    def demonstration_contexts(self, batch, ctx, demo_index: torch.Tensor, context: str = "full",
                               **settings) -> list[list[int]]:
        """Teacher contexts for one column of demonstration indices (-1: the plain prompt; >= B: the
        rule's extra completions) of kind `context` (`settings`: `context_tokens`, `context_fraction`)."""
        out, b = [], len(batch.tokens)
        if context not in offered_contexts(ctx.task):
            raise context_not_offered(ctx.task, context)
        # numpy rows, as `verify` gets them: a task walks a demonstration token by token, and a tensor
        # row costs a tensor per token (a tenth of the teacher's time at the default preset)
        rows, groups = batch.tokens.cpu().numpy(), batch.group_index.tolist()
        for i, j in enumerate(demo_index.tolist()):
            prompt = batch.prompts[groups[i]]
            if j < 0 or context == "none":
                out.append(batch.contexts[i])
                continue
            demo = rows[j] if j < b else self._extra[j - b].cpu().numpy()
            if context == "full":  # the call every task offers, unchanged
                out.append(ctx.task.teacher_context(prompt, demo))
            else:
                out.append(ctx.task.teacher_context(prompt, demo, kind=context,
                                                    rollout_correct=bool(batch.correct[i]), **settings))
        return out

    def demonstrations(self, batch, ctx, m: int = 1, rule: str = "uniform", buffer_size: int = 16,
                       context: str = "full", context_tokens: int = 0, context_fraction: float = 0.5,
                       teacher_path: str = "") -> tuple[torch.Tensor, list[Scores]]:
        """(demonstration indices [B, m] (-1: none, e.g. the group has no correct rollout; >= B: a
        completion from outside the batch, the buffer's), the m teachers' `Scores` of the rollouts,
        column k conditioned on demonstrations[:, k]), drawn once per step under `rule`
        (`mitigate.objectives.demos`; `uniform` draws exactly as before the rules existed), with the
        teacher seeing `context` of each (module docstring). `teacher_path`: where teacher `external`
        loads from on first use."""
        if context not in CONTEXT_KINDS:
            raise context_not_offered(ctx.task, context)
        if self.weights is None:  # teacher external, first call
            self.weights = load_external(teacher_path, self.policy, ctx.task)
        key = (ctx.step, m, rule, context)
        if key not in self._cache:
            self._cache = {}
            if self._first_step is None:
                self._first_step = ctx.step
            settings = {"context_tokens": context_tokens, "context_fraction": context_fraction}
            if context == "none":  # nothing to draw: every rollout has a target, or none (the live null)
                b = len(batch.tokens)
                own = torch.arange(b, device=batch.group_index.device)[:, None].repeat(1, m)
                demos, self._extra = (torch.full_like(own, -1) if self.kind == "live" else own), []
                self._cache[key] = (demos, self._columns(batch, ctx, demos, context, settings))
                return self._cache[key]
            if rule == "buffer" and self.buffer is None:
                if self._first_step > 1:
                    raise ResumeError(f"demo_rule 'buffer' keeps earlier steps' correct rollouts, which a resume "
                                      f"checkpoint does not hold: a run resumed at step {ctx.step} could not be "
                                      "exact; start over with --overwrite")
                self.buffer = demo_rules.DemoBuffer(buffer_size)
            if rule == "uniform":  # the original draws, by this module's name (tests enumerate them through it)
                demos, self._extra = pick_demonstrations(batch.group_index, batch.correct, m, ctx.generator), []
            else:
                demos, self._extra = demo_rules.pick(rule, batch, m, ctx.generator, self.buffer, ctx.step)
            self._cache[key] = (demos, self._columns(batch, ctx, demos, context, settings))
        return self._cache[key]

    def _columns(self, batch, ctx, demos: torch.Tensor, context: str = "full",
                 settings: dict | None = None) -> list[Scores]:
        """The m columns' scores from one forward over all m x B teacher rows, where a column often
        repeats another's (few correct rollouts to draw from): each distinct row runs once
        (`policies.base.distinct_rows`). Per column when the policy's `Scores` have no `rows`."""
        m, n = demos.shape[1], len(batch.tokens)
        contexts = [self.demonstration_contexts(batch, ctx, demos[:, k], context, **(settings or {}))
                    for k in range(m)]
        if m > 1 and self._splittable is not False:
            rows = [c for col in contexts for c in col]
            scores = self.scores(rows, batch.tokens.repeat(m, 1), batch.mask.repeat(m, 1))
            self._splittable = hasattr(scores, "rows")
            if self._splittable:
                return [scores.rows(k * n, (k + 1) * n) for k in range(m)]
        return [self.scores(col, batch.tokens, batch.mask) for col in contexts]

    @torch.no_grad()
    def after_step(self) -> None:
        if self.kind == "ema":
            for t, s in zip(self.weights.model.parameters(), self.policy.model.parameters()):
                t.lerp_(s, 1 - self.decay)
