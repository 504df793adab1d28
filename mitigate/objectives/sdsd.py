"""SDSD: self-distillation with sampled demonstrations.

For each rollout y of prompt x, a correct rollout y* of the same group (another one when there is
one) is the demonstration; the teacher is the model itself under no-grad, conditioned on it in
the task's demonstration format (`mitigate.objectives.teacher`). The student minimises the
token-level divergence to it at every position of its own rollout, over the full vocabulary:

    L = agg_t D( pi(. | x, y_<t) || pi_teacher(. | x, y*, y_<t) )       (D = reverse KL by default)

Averaged over y*, its optimum is p0(y) exp(E_{y*} pcmi(y; y* | x)) / Z: the tilt this package
studies. Groups with no correct rollout have no demonstration and are masked (share logged).

Options shared by every SDSD-family objective (their configs derive from `SDSDConfig`; defaults are
the package's original SDSD, and leave a run's numbers as they were):

    demo_rule        which correct rollout is the demonstration (`mitigate.objectives.demos`): uniform
                     over the group's others (default), first (public SDPO trainers), distinct,
                     least_likely, buffer (earlier steps), other_prompt (the control)
    divergence       D: reverse_kl (default), forward_kl (what published self-distillation runs used),
                     jsd, or gjsd, the generalised JSD with weight jsd_alpha between them
                     (`ops.generalised_jsd`: alpha 0 = forward_kl, 1 = reverse_kl, 0.5 = jsd)
    divergence_topk  0: the full vocabulary (default); k: D between the two distributions coarsened to
                     the k most likely tokens of the teacher's (topk_of) or the student's distribution
                     plus one tail bucket (`ops.topk_tail_divergence`; equal to the full D at k = V)
    teacher_context  what the teacher sees of the demonstration: full (default), partial (first j tokens:
                     context_tokens, or context_fraction of them), answer, answer_verdict, none (the plain
                     prompt: on-policy distillation; with the live teacher the null, exactly zero loss)
    teacher          live (default), ema, base, or external: a frozen checkpoint at teacher_path, checked
                     against the task and the student before training (`mitigate.objectives.external`).
                     teacher external with teacher_context none is on-policy distillation from it.

Where the divergence is not reverse KL the fixed point is no longer the geometric mean of teachers:
forward KL's per-prefix optimum is their arithmetic mean (the mass-covering mixture E_{y*} T(. | y*)
at each prefix, itself a tilt toward what likely demonstrations say).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.demos import DEMO_RULES
from mitigate.objectives.teacher import TEACHERS
from mitigate.ops import AGGREGATIONS, DISTILL_DIVERGENCES, TOPK_OF, aggregate, masked_mean, sampled_token_reverse_kl
from mitigate.tasks.base import CONTEXT_KINDS

ESTIMATORS = ("full_vocab", "sampled_token")


@dataclass
class SDSDConfig(Section):
    name: str = opt("sdsd", "registered objective name")
    divergence: str = opt("reverse_kl", "token-level divergence student -> teacher (gjsd: weight jsd_alpha)",
                          choices=DISTILL_DIVERGENCES)
    estimator: str = opt("full_vocab", "full-vocabulary divergence, or score-function on the sampled token",
                         choices=ESTIMATORS)
    teacher: str = opt("live", "teacher weights: current (live), EMA of student, frozen base, or a frozen "
                               "checkpoint at teacher_path (external)", choices=TEACHERS)
    ema_decay: float = opt(0.99, "EMA decay when teacher=ema", min=0.0, max=1.0)
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)
    demo_rule: str = opt("uniform", "which correct rollout is the demonstration (mitigate.objectives.demos)",
                         choices=DEMO_RULES)
    demo_buffer_size: int = opt(16, "correct completions kept per prompt when demo_rule=buffer (oldest dropped)",
                                min=1)
    jsd_alpha: float = opt(0.5, "weight alpha of divergence gjsd: 0 = forward_kl, 1 = reverse_kl, 0.5 = jsd",
                           min=0.0, max=1.0)
    divergence_topk: int = opt(0, "0: full vocabulary; k: top-k tokens plus one tail bucket", min=0)
    topk_of: str = opt("teacher", "whose k most likely tokens the top-k form keeps", choices=TOPK_OF)
    teacher_context: str = opt("full", "what the teacher sees besides the prompt: the whole demonstration, its "
                                       "first j tokens, its answer, its answer and the verdict on the rollout, or "
                                       "nothing (mitigate.objectives.teacher)", choices=CONTEXT_KINDS)
    context_tokens: int = opt(0, "teacher_context partial: the demonstration's first j tokens (0: use "
                                 "context_fraction)", min=0)
    context_fraction: float = opt(0.5, "teacher_context partial with context_tokens 0: the first floor(fraction x "
                                       "length) tokens of the demonstration", min=0.0, max=1.0)
    teacher_path: str = opt("", "teacher external: the frozen checkpoint (mitigate checkpoint or run folder; hf "
                                "policy: also a transformers folder or tiny:ARCH) the teacher's weights come from")

    # fields added after results were recorded: left out of summary.json's objective records while at
    # their defaults (`mitigate.recipes.reproduce.objective_record`), so earlier summaries stay comparable
    _quiet_at_default = ("demo_rule", "demo_buffer_size", "jsd_alpha", "divergence_topk", "topk_of",
                         "teacher_context", "context_tokens", "context_fraction", "teacher_path")

    def validate(self) -> None:
        check_teacher_fields(self)


def check_teacher_fields(cfg) -> None:
    """`teacher: external` needs `teacher_path`, which no other teacher reads; `context_tokens` and
    `context_fraction` are read by `teacher_context: partial` only (set elsewhere: an error, not ignored)."""
    where = f"{cfg._where}." if cfg._where else ""
    if cfg.teacher == "external" and not cfg.teacher_path:
        raise ValueError(f"'{where}teacher' is external but '{where}teacher_path' is empty: give the folder of the "
                         "frozen teacher checkpoint")
    if cfg.teacher != "external" and cfg.teacher_path:
        raise ValueError(f"'{where}teacher_path' is read only with teacher: external (teacher is '{cfg.teacher}')")
    if cfg.teacher_context != "partial" and (cfg.context_tokens != 0 or cfg.context_fraction != 0.5):
        raise ValueError(f"'{where}context_tokens' and '{where}context_fraction' are read only with teacher_context: "
                         f"partial (teacher_context is '{cfg.teacher_context}')")


def demo_options(cfg) -> dict:
    """`Teacher.demonstrations` keywords of a config with `demo_rule` and the teacher's context and
    path (every SDSD-family config)."""
    return {"rule": cfg.demo_rule, "buffer_size": cfg.demo_buffer_size, "context": cfg.teacher_context,
            "context_tokens": cfg.context_tokens, "context_fraction": cfg.context_fraction,
            "teacher_path": cfg.teacher_path}


def divergence_options(cfg: SDSDConfig) -> dict:
    """`batch.divergence` keywords of an SDSD-family config: none at the defaults (the original call)."""
    if cfg.divergence != "gjsd" and not cfg.divergence_topk:
        return {}
    return {"alpha": cfg.jsd_alpha, "topk": cfg.divergence_topk, "topk_of": cfg.topk_of}


@register_objective("sdsd", SDSDConfig)
def sdsd(batch: Batch, ctx: Context, cfg: SDSDConfig) -> tuple[torch.Tensor, dict]:
    demos, (teacher,) = ctx.teacher.demonstrations(batch, ctx, 1, **demo_options(cfg))
    demo = demos[:, 0]
    has_demo = (demo >= 0).float()[:, None]
    mask = batch.mask * has_demo
    if cfg.estimator == "full_vocab":
        per_token = batch.divergence(teacher, cfg.divergence, **divergence_options(cfg))
        div = per_token.detach()
    else:
        if cfg.divergence != "reverse_kl" or cfg.divergence_topk:
            raise ValueError("estimator 'sampled_token' supports divergence 'reverse_kl' over the full vocabulary only")
        per_token = sampled_token_reverse_kl(batch.token_logprobs(), teacher.token_logprobs())
        with torch.no_grad():  # logged: the full-vocabulary divergence the estimator targets
            div = batch.divergence(teacher, cfg.divergence)
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    return loss, {f"{cfg.divergence}_teacher": masked_mean(div, mask).item(),
                  "masked_prompts": 1.0 - has_demo.mean().item()}
