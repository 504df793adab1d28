"""sdsd_cmi: sequence-level self-distillation with the sequence-level tilt correction.

Self-distillation toward a teacher that saw a correct demonstration y*, taken at the level of
whole rollouts, is REINFORCE with the pointwise CMI as reward: the score-function gradient of
KL(pi(y|x) || p(y|x,y*)) is -E[grad log pi(y) pcmi(y; y*|x)], pcmi = log p(y|x,y*) - log pi(y|x).
Each rollout y_i gets M demonstrations y*_im from the correct rollouts of its group (another one
when there is one; `ops.pick_demonstrations`), and (detached)

    pcmi_im  = sum_t [log p(y_t | x, y*_im, y_<t) - log pi(y_t | x, y_<t)]      pcmi_hat_i = mean_m pcmi_im

Averaged over y*, this reward tilts the optimum toward outputs that resemble likely
demonstrations (the SDSD tilt). The correction replaces, for correct rollouts, their own
pcmi_hat by a level that does not depend on them, with `coef` interpolating:

    R_i = pcmi_hat_i                                       y_i incorrect (the teacher's signal kept)
    R_i = (1 - coef) pcmi_hat_i + coef l_i                 y_i correct
    A_i = R_i - l_i                                        (baseline l_i)
    L   = agg_t [ -A_i log pi(y_{i,t} | x, y_{i,<t}) ]

l_i is the mean of pcmi_jm over the OTHER correct rollouts j of the group and the demonstrations
y*_jm that are not y_i (`ops.leave_one_out_demo_mean`): for an incorrect rollout, simply the mean
pcmi of the group's correct rollouts. Leaving out y_i's own value is not enough: the other
rollouts' pcmi computed with y_i as their demonstration depends on y_i (a rollout that explains
the others well would earn more, a tilt of its own). Built this way l_i depends on the other
rollouts and on the demonstration draws only, never on which correct output y_i is: as a level it
gives every correct rollout of a group the same reward, and as a baseline it reduces variance
without changing the expected gradient among correct outputs (its only effect in expectation is
on the level of correct against incorrect outputs, i.e. on the correct mass). A correct rollout
with no such value (the only other correct rollout's demonstrations are all y_i) uses 0; its
group's only correct rollout has A_i = 0 (its demonstration was itself).

Fixed point, with the shared KL anchor beta (`ops.reverse_kl_anchor`): the expected gradient is
that of E_pi[R] - beta KL(pi || p0) for the effective reward R(y) = E[A | y], so

    pi(y) = p0(y) exp(R(y) / beta) / Z,     R(y) = (1 - coef) a E_{y*}[pcmi(y; y*)] + const   on C

(a = probability of another correct rollout in the group; R depends on pi through pcmi, so this
is a fixed-point equation). At coef = 1 every correct rollout's advantage is exactly 0, R is
constant on the correct set, and the base ratios among correct outputs are preserved (the RL
optimum). coef = 0 is sequence-level SDSD: since pcmi contains -log pi(y), on C the fixed point is
pi ∝ (p0^beta exp(a E_{y*} log p(y | x, y*)))^(1 / (beta + a)), between the base and the geometric
mean of the teachers. M reduces variance and does not move the fixed point among correct outputs
(the estimator is linear in the demonstrations; M only enters the correct mass through how often
a baseline exists). Incorrect outputs keep the teacher's signal, which moves the correct mass.
Control (`weights: constant`): every incorrect rollout's advantage is replaced by the batch mean
of the incorrect rollouts' advantages (and likewise for the correct ones, zero at coef 1): the same
average push on incorrect outputs, with none of the pcmi's ranking among them. An effect that
survives this replacement is not CMI's; the README attributes nothing to CMI until this row is in
the table. `mitigate.theory.objective_field("sdsd_cmi", ...)` computes R exactly and
tests/unit/test_theory_code.py checks it against this function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mitigate.core.fields import Section, opt
from mitigate.objectives.base import Batch, Context, register_objective
from mitigate.objectives.demos import DEMO_RULES
from mitigate.objectives.sdsd import check_teacher_fields, demo_options
from mitigate.objectives.teacher import TEACHERS
from mitigate.ops import AGGREGATIONS, aggregate, leave_one_out_demo_mean, masked_mean
from mitigate.policies.base import Scores
from mitigate.tasks.base import CONTEXT_KINDS


@dataclass
class SDSDCMIConfig(Section):
    name: str = opt("sdsd_cmi", "registered objective name")
    M: int = opt(4, "demonstrations per rollout for the pcmi estimate (variance only; the fixed point "
                    "does not depend on it)", min=1)
    coef: float = opt(1.0, "weight of the tilt correction on correct rollouts in [0, 1] (1 = remove the tilt, "
                           "0 = sequence-level SDSD)", min=0.0)
    teacher: str = opt("live", "teacher weights: current (live), EMA of student, frozen base, or a frozen "
                               "checkpoint at teacher_path (external)", choices=TEACHERS)
    ema_decay: float = opt(0.99, "EMA decay when teacher=ema", min=0.0, max=1.0)
    weights: str = opt("pcmi", "per-rollout advantage: the centred pcmi (the method), or the control 'constant': "
                               "each rollout's replaced by the batch mean over rollouts of its correctness "
                               "(same mean push, no CMI information)", choices=("pcmi", "constant"))
    aggregation: str = opt("token_mean", "how per-token losses are reduced", choices=AGGREGATIONS)
    demo_rule: str = opt("uniform", "which correct rollout is the demonstration (mitigate.objectives.demos)",
                         choices=DEMO_RULES)
    demo_buffer_size: int = opt(16, "correct completions kept per prompt when demo_rule=buffer (oldest dropped)",
                                min=1)
    teacher_context: str = opt("full", "what the teacher sees besides the prompt (see sdsd)", choices=CONTEXT_KINDS)
    context_tokens: int = opt(0, "teacher_context partial: the demonstration's first j tokens (0: use "
                                 "context_fraction)", min=0)
    context_fraction: float = opt(0.5, "teacher_context partial with context_tokens 0: the first floor(fraction x "
                                       "length) tokens of the demonstration", min=0.0, max=1.0)
    teacher_path: str = opt("", "teacher external: the frozen checkpoint the teacher's weights come from (see sdsd)")

    # see SDSDConfig: summaries omit them at defaults
    _quiet_at_default = ("demo_rule", "demo_buffer_size", "teacher_context", "context_tokens", "context_fraction",
                         "teacher_path", "weights")

    def validate(self) -> None:
        check_teacher_fields(self)
        if self.coef > 1:
            where = f"{self._where}.coef" if self._where else "coef"
            raise ValueError(f"'{where}' must be <= 1.0, got {self.coef} (coef > 1 was the anti-copy reward of the "
                             "former sdsd_cmi: that objective is now `sdsd_anticopy`, with its own coef)")


def per_demonstration_pcmi(batch: Batch, teachers: list[Scores], mask: torch.Tensor) -> torch.Tensor:
    """[B, M] sequence-level pcmi of each rollout against each of its M demonstrations (detached)."""
    student = batch.token_logprobs().detach()
    return torch.stack([((t.token_logprobs() - student) * mask).sum(-1) for t in teachers], 1)


def demonstration_baseline(pcmi: torch.Tensor, demos: torch.Tensor, batch: Batch,
                           correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(l [B], has_other [B]): the level/baseline l_i (NaN where none) and whether the group has
    another correct rollout than row i."""
    level = leave_one_out_demo_mean(pcmi, demos, batch.group_index, correct)
    n = int(batch.group_index.max()) + 1
    w = correct.to(pcmi.dtype)
    count = torch.zeros(n, dtype=pcmi.dtype, device=pcmi.device).index_add_(0, batch.group_index, w)
    return level, count[batch.group_index] - w > 0.5


def class_means(values: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor) -> torch.Tensor:
    """[B] `values` with each correct row's replaced by the mean over the batch's correct rows, and
    each incorrect row's by the mean over its incorrect rows (others unchanged): the constant-weight
    control, equal to `values` when these are already equal within each class."""
    out = values.clone()
    for rows in (correct, incorrect):
        if rows.any():
            out[rows] = values[rows].mean()
    return out


@register_objective("sdsd_cmi", SDSDCMIConfig)
def sdsd_cmi(batch: Batch, ctx: Context, cfg: SDSDCMIConfig) -> tuple[torch.Tensor, dict]:
    demos, teachers = ctx.teacher.demonstrations(batch, ctx, cfg.M, **demo_options(cfg))
    has_demo = demos[:, 0] >= 0
    mask = batch.mask * has_demo.float()[:, None]
    pcmi = per_demonstration_pcmi(batch, teachers, mask)  # [B, M]
    pcmi_hat = pcmi.mean(1)
    correct = batch.correct & has_demo
    level, has_other = demonstration_baseline(pcmi, demos, batch, correct)
    centred = pcmi_hat - torch.nan_to_num(level, nan=0.0)
    if cfg.weights == "constant":
        centred = class_means(centred, correct, has_demo & ~batch.correct)
    advantage = torch.where(correct, (1 - cfg.coef) * centred * has_other, centred)
    advantage = torch.where(has_demo, advantage, torch.zeros_like(advantage))
    per_token = -advantage[:, None] * batch.token_logprobs()
    loss = aggregate(per_token, mask, cfg.aggregation) if mask.sum() > 0 else batch.zero_loss()
    spread = centred[correct & has_other]
    return loss, {"pcmi_hat_correct": pcmi_hat[correct].mean().item() if correct.any() else 0.0,
                  "pcmi_spread_correct": spread.abs().mean().item() if len(spread) else 0.0,
                  "pcmi_hat_incorrect": masked_mean(pcmi_hat, (has_demo & ~batch.correct).float()).item(),
                  "masked_prompts": 1.0 - has_demo.float().mean().item()}
