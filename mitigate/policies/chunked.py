"""Full-vocabulary divergences between a student and a teacher from last hidden states, in chunks.

A language model's next-token distribution at a position is `softmax(W h + b)`, with `h` [H] the
last hidden state (after the final norm) and `W` [V, H] the output projection. The naive way to
get a per-token divergence materialises the logits, both log-softmaxes and the autograd buffers
for every position at once: [N, V] several times over, which for 64 rollouts x 512 tokens x a
152k vocabulary is about 20 GB per copy in fp32. Here the N positions are cut into chunks of
`chunk_size`; each chunk's logits live only inside a `torch.utils.checkpoint` region, so the
forward keeps one chunk's [C, V] at a time and the backward recomputes them chunk by chunk. Peak
memory then grows with `chunk_size * V`, not `N * V`; values and gradients are those of the naive
path (tested in tests/unit/test_hf_policy.py).

    full       chunked_divergence(student_h, teacher_h, W_s, W_t, kind)          exact
    topk_tail  teacher_topk(teacher_h, W_t, k) -> (ids, logprobs)               an approximation:
               topk_tail_divergence(student_h, W_s, ids, logprobs, kind)        the teacher's top-k
                                                                                 tokens plus one tail bucket

The top-k form is the divergence between the two distributions coarsened to k + 1 buckets (the
teacher's k most likely tokens and "everything else"). It never exceeds the full divergence (data
processing inequality), equals it when k = V, and needs only [N, k] of teacher state, so teacher
targets can be stored once per step. The tail bucket matters: without it the student could lower
the loss by shrinking its own mass on the teacher's top-k. Divergence kinds and their conventions
are those of `mitigate.ops.token_divergence` (reverse_kl = KL(student || teacher)). The teacher
is always a stop-gradient target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mitigate.ops import DIVERGENCES, token_divergence

APPROXIMATIONS = ("full", "topk_tail")
TINY = 1e-30  # floor for a tail bucket's probability (an empty tail has log-probability log(TINY) on both sides)


def log_softmax_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(W h + b) in fp32: [N, H] x [V, H] -> [N, V] (the projection runs in the weight's dtype)."""
    return torch.log_softmax(F.linear(hidden.to(weight.dtype), weight, bias).float(), -1)


def naive_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                     teacher_weight: torch.Tensor, kind: str = "reverse_kl", student_bias: torch.Tensor | None = None,
                     teacher_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: all N positions' [N, V] log-probs at once, then `ops.token_divergence`. [N]."""
    student = log_softmax_logits(student_hidden, student_weight, student_bias)
    with torch.no_grad():
        teacher = log_softmax_logits(teacher_hidden, teacher_weight, teacher_bias)
    return token_divergence(student, teacher, kind)


def _chunk_divergence(student_hidden, teacher_hidden, student_weight, student_bias, teacher_weight, teacher_bias,
                      kind):
    # Run inside checkpoint(): everything built here is freed after the forward and rebuilt in the backward.
    student = log_softmax_logits(student_hidden, student_weight, student_bias)
    with torch.no_grad():
        teacher = log_softmax_logits(teacher_hidden, teacher_weight, teacher_bias)
    return token_divergence(student, teacher, kind)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check(kind: str, chunk_size: int) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence '{kind}'; allowed: {', '.join(DIVERGENCES)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def chunked_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                       teacher_weight: torch.Tensor, kind: str = "reverse_kl", chunk_size: int = 256,
                       student_bias: torch.Tensor | None = None,
                       teacher_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position full-vocabulary divergence [N] from hidden states [N, H] and projections [V, H].

    Equal (values and gradients with respect to the student's hidden states, weight and bias) to
    `naive_divergence`, computed `chunk_size` positions at a time under activation checkpointing.
    The teacher's tensors are detached: it is a target, never trained through this term. Pass only
    the positions that count (e.g. `hidden[mask.bool()]`): padding costs as much as a real token."""
    _check(kind, chunk_size)
    teacher_hidden, teacher_weight = teacher_hidden.detach(), teacher_weight.detach()
    teacher_bias = None if teacher_bias is None else teacher_bias.detach()
    grad = _needs_grad(student_hidden, student_weight, student_bias)
    parts = []
    for lo in range(0, len(student_hidden), chunk_size):
        args = (student_hidden[lo:lo + chunk_size], teacher_hidden[lo:lo + chunk_size], student_weight,
                student_bias, teacher_weight, teacher_bias, kind)
        parts.append(checkpoint(_chunk_divergence, *args, use_reentrant=False) if grad else _chunk_divergence(*args))
    if not parts:
        return student_hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


# ----------------------------------------------------------------------------- top-k with a tail bucket

def tail_bucket(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] log-probs of k tokens -> [N, k + 1]: the same plus log(1 - their total mass)."""
    total = torch.logsumexp(topk_logprobs, -1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(total)).clamp(min=TINY))
    return torch.cat([topk_logprobs, tail], -1)


@torch.no_grad()
def teacher_topk(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, k: int, chunk_size: int = 256,
                 teacher_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens and their log-probs at each position: ([N, k] ids, [N, k] fp32)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, teacher_weight.shape[0])
    ids, logprobs = [], []
    for lo in range(0, len(teacher_hidden), chunk_size):
        lp = log_softmax_logits(teacher_hidden[lo:lo + chunk_size], teacher_weight, teacher_bias)
        top = lp.topk(k, -1)
        ids.append(top.indices)
        logprobs.append(top.values)
    if not ids:
        empty = teacher_hidden.new_zeros((0, k))
        return empty.long(), empty.float()
    return torch.cat(ids), torch.cat(logprobs)


def _chunk_topk_tail(student_hidden, student_weight, student_bias, teacher_ids, teacher_logprobs, kind):
    student = log_softmax_logits(student_hidden, student_weight, student_bias).gather(-1, teacher_ids)
    return token_divergence(tail_bucket(student), tail_bucket(teacher_logprobs), kind)


def topk_tail_divergence(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_ids: torch.Tensor,
                         teacher_logprobs: torch.Tensor, kind: str = "reverse_kl", chunk_size: int = 256,
                         student_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position divergence [N] between student and teacher coarsened to the teacher's top-k tokens
    plus one tail bucket (see the module docstring). The student's full-vocabulary normaliser is
    still computed, in chunks under checkpointing; the teacher enters only through [N, k]."""
    _check(kind, chunk_size)
    teacher_ids, teacher_logprobs = teacher_ids.detach(), teacher_logprobs.detach().float()
    grad = _needs_grad(student_hidden, student_weight, student_bias)
    parts = []
    for lo in range(0, len(student_hidden), chunk_size):
        sl = slice(lo, lo + chunk_size)
        args = (student_hidden[sl], student_weight, student_bias, teacher_ids[sl], teacher_logprobs[sl], kind)
        parts.append(checkpoint(_chunk_topk_tail, *args, use_reentrant=False) if grad else _chunk_topk_tail(*args))
    if not parts:
        return student_hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
               teacher_weight: torch.Tensor, kind: str = "reverse_kl", approximation: str = "full",
               chunk_size: int = 256, topk: int = 64, student_bias: torch.Tensor | None = None,
               teacher_bias: torch.Tensor | None = None) -> torch.Tensor:
    """One entry point for both forms: `approximation` is "full" (exact) or "topk_tail" (k = `topk`)."""
    if approximation == "full":
        return chunked_divergence(student_hidden, teacher_hidden, student_weight, teacher_weight, kind, chunk_size,
                                  student_bias, teacher_bias)
    if approximation == "topk_tail":
        ids, logprobs = teacher_topk(teacher_hidden, teacher_weight, topk, chunk_size, teacher_bias)
        return topk_tail_divergence(student_hidden, student_weight, ids, logprobs, kind, chunk_size, student_bias)
    raise ValueError(f"unknown approximation '{approximation}'; allowed: {', '.join(APPROXIMATIONS)}")

