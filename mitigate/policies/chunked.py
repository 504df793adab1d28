"""Full-vocabulary divergences between a student and a teacher from last hidden states, in chunks.

A language model's next-token distribution at a position is `softmax(W h + b)`, with `h` [H] the
last hidden state (after the final norm) and `W` [V, H] the output projection. The naive way to
get a per-token divergence materialises the logits, both log-softmaxes and the autograd buffers
for every position at once: [N, V] several times over, which for 64 rollouts x 512 tokens x a
152k vocabulary is about 20 GB per copy in fp32. Here the N positions are cut into chunks of
`chunk_size`: the forward keeps no logits, and the backward recomputes each chunk's logits, takes
the divergence's gradient with respect to them and applies the projection's gradients by hand,
accumulating the weight's gradient in place. Peak memory then grows with `chunk_size * V` plus
one weight gradient, not `N * V`; values and gradients are those of the naive
path (tested in tests/unit/test_hf_policy.py).

    full       chunked_divergence(student_h, teacher_h, W_s, W_t, kind)          exact
    tokens     chunked_token_logprobs(h, W, tokens)                             log p of given tokens
    entropy    chunked_entropy(h, W)                                            exact
    topk_tail  teacher_topk(teacher_h, W_t, k) -> (ids, logprobs)               an approximation:
               topk_tail_divergence(student_h, W_s, ids, logprobs, kind)        the teacher's top-k
                                                                                 tokens plus one tail bucket

The top-k form is the divergence between the two distributions coarsened to k + 1 buckets (the
teacher's k most likely tokens and "everything else"). It never exceeds the full divergence (data
processing inequality), equals it when k = V, and needs only [N, k] of teacher state, so teacher
targets can be stored once per step. The tail bucket matters: without it the student could lower
the loss by shrinking its own mass on the teacher's top-k. Divergence kinds and their conventions
are those of `mitigate.ops.token_divergence` (reverse_kl = KL(student || teacher)). The teacher
is always a stop-gradient target; it may be a mixture of M teachers, sum_m w_m softmax(W h_m + b)
with per-position weights (teacher hidden states [N, M, H], log-weights [N, M]), which
`sdsd_marginal` needs.

`HiddenScores` puts these behind the `mitigate.policies.base.Scores` interface: the training loop
and the objectives see [B, T] values only, and the `hf` policy never builds [B, T, V].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mitigate.ops import DISTILL_DIVERGENCES, DIVERGENCES, divergence_with, log_mixture, token_divergence, token_entropy

APPROXIMATIONS = ("full", "topk_tail")
TINY = 1e-30  # floor for a tail bucket's probability (an empty tail has log-probability log(TINY) on both sides)


def log_softmax_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(W h + b) in fp32: [N, H] x [V, H] -> [N, V] (the projection runs in the weight's dtype)."""
    return torch.log_softmax(F.linear(hidden.to(weight.dtype), weight, bias).float(), -1)


def teacher_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """A target's log-probs [N, V]: `log_softmax_logits` of hidden [N, H], or with `log_weights` [N, M]
    the mixture log sum_m w_m softmax(W h_m + b) of hidden [N, M, H] (`ops.log_mixture`)."""
    lp = log_softmax_logits(hidden, weight, bias)
    if log_weights is None:
        return lp
    return log_mixture(log_weights.float().T, lp.transpose(0, 1))


def naive_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                     teacher_weight: torch.Tensor, kind: str = "reverse_kl", student_bias: torch.Tensor | None = None,
                     teacher_bias: torch.Tensor | None = None,
                     teacher_log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: all N positions' [N, V] log-probs at once, then `ops.token_divergence`. [N]."""
    student = log_softmax_logits(student_hidden, student_weight, student_bias)
    with torch.no_grad():
        teacher = teacher_log_softmax(teacher_hidden, teacher_weight, teacher_bias, teacher_log_weights)
    return token_divergence(student, teacher, kind)


def autograd_logits_grad(value_fn):
    """grad_fn for any `value_fn(logits, *targets) -> [C]`: G = d(sum grad_out * value) / d logits by autograd."""

    def grad_fn(hidden, weight, bias, grad_out, *targets):
        logits = F.linear(hidden, weight, bias).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(value_fn(logits, *targets), logits, grad_out)
        return g

    return grad_fn


class _ChunkedFromLogits(torch.autograd.Function):
    """d = value_fn(W h + b, *targets) for chunks of positions. The forward keeps no logits; in the
    backward, `grad_fn(h, W, b, grad_out, *targets)` recomputes a chunk's logits and returns
    G = grad_out * dd/dlogits [C, V]; the projection's gradients are then applied by hand: dh = G W,
    dW += G^T h, db += sum G, the weight's gradient accumulated in place. (Checkpointing each chunk
    with torch.utils.checkpoint instead keeps autograd's whole graph per chunk and a [V, H] weight
    gradient per chunk that autograd then sums; benchmarks/divergence_memory.py measures both.)"""

    @staticmethod
    def forward(ctx, hidden, weight, bias, value_fn, grad_fn, chunk_size, *targets):
        ctx.grad_fn, ctx.chunk_size = grad_fn, chunk_size
        ctx.save_for_backward(hidden, weight, bias, *targets)
        parts = []
        for lo in range(0, len(hidden), chunk_size):
            sl = slice(lo, lo + chunk_size)
            parts.append(value_fn(F.linear(hidden[sl].to(weight.dtype), weight, bias), *(t[sl] for t in targets)))
        return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight, bias, *targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for lo in range(0, len(hidden), ctx.chunk_size):
            sl = slice(lo, lo + ctx.chunk_size)
            h = hidden[sl].to(weight.dtype)
            g = ctx.grad_fn(h, weight, bias, grad_out[sl], *(t[sl] for t in targets)).to(weight.dtype)
            if need_h:
                grad_h[sl] = (g @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(g.T, h)
            if need_b:
                grad_b += g.sum(0)
            del g
        return grad_h, grad_w, grad_b, None, None, None, *(None for _ in targets)


def divergence_logits_grad(logits: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """dD/dlogits [C, V] (fp32) of the per-position divergence D between p = softmax(logits) and the
    teacher's log-probs `teacher`, in closed form and mostly in place (three [C, V] buffers where
    autograd's graph keeps about eight). With s = log p, t = log q, m = (p + q) / 2:

        reverse_kl  D = sum p (s - t)          dD/dz = p * ((s - t) - D)
        forward_kl  D = sum q (t - s)          dD/dz = p - q
        jsd         D = (KL(p||m) + KL(q||m))/2  dD/dz = p * (a - sum p a),  a = (s - log m) / 2
    """
    s = torch.log_softmax(logits.float(), -1)
    if kind == "forward_kl":
        return s.exp_().sub_(teacher.exp())
    p = s.exp()
    if kind == "reverse_kl":
        a = s.sub_(teacher)
    else:  # jsd
        log_m = torch.logaddexp(s, teacher).sub_(math.log(2.0))
        a = s.sub_(log_m).mul_(0.5)
        del log_m
    mean = torch.bmm(p.unsqueeze(1), a.unsqueeze(2)).view(-1, 1)  # sum_v p a, without a [C, V] product
    return a.sub_(mean).mul_(p)


def _check(kind: str, chunk_size: int) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence '{kind}'; allowed: {', '.join(DIVERGENCES)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def chunked_divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                       teacher_weight: torch.Tensor, kind: str = "reverse_kl", chunk_size: int = 256,
                       student_bias: torch.Tensor | None = None, teacher_bias: torch.Tensor | None = None,
                       teacher_log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position full-vocabulary divergence [N] from hidden states [N, H] and projections [V, H].

    Equal (values and gradients with respect to the student's hidden states, weight and bias) to
    `naive_divergence`, computed `chunk_size` positions at a time; the backward recomputes each
    chunk's logits instead of keeping them. The teacher's tensors are detached: it is a target,
    never trained through this term. With `teacher_log_weights` [N, M] the teacher is the mixture
    of `teacher_hidden` [N, M, H] (`teacher_log_softmax`). Pass only the positions that count (e.g.
    `hidden[mask.bool()]`): padding costs as much as a real token."""
    _check(kind, chunk_size)
    teacher_weight = teacher_weight.detach()
    teacher_bias = None if teacher_bias is None else teacher_bias.detach()
    targets = (teacher_hidden.detach(),) if teacher_log_weights is None else (
        teacher_hidden.detach(), teacher_log_weights.detach())

    def teacher_logprobs(*target):
        return teacher_log_softmax(target[0], teacher_weight, teacher_bias, *target[1:])

    def values(logits, *target):
        return token_divergence(torch.log_softmax(logits.float(), -1), teacher_logprobs(*target), kind)

    def grads(hidden, weight, bias, grad_out, *target):
        teacher = teacher_logprobs(*target)  # first, so the student's logits are never alive beside the teacher's
        return divergence_logits_grad(F.linear(hidden, weight, bias), teacher, kind).mul_(grad_out[:, None])

    return _ChunkedFromLogits.apply(student_hidden, student_weight, student_bias, values, grads, chunk_size,
                                    *targets)


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, chunk_size: int = 256,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(W h + b)[token] at each position: [N, H], [N] -> [N] fp32, in chunks, with the
    closed-form gradient d log p_y / dz = onehot(y) - p. What GRPO's ratio and the k3 anchor need,
    without the [N, V] log-probs."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def values(logits, ids):
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0]

    def grads(hidden, weight, bias, grad_out, ids):
        g = torch.softmax(F.linear(hidden, weight, bias).float(), -1).neg_()
        g.scatter_add_(-1, ids[:, None], torch.ones_like(ids, dtype=g.dtype)[:, None])
        return g.mul_(grad_out[:, None])

    return _ChunkedFromLogits.apply(hidden, weight, bias, values, grads, chunk_size, tokens.detach())


def chunked_entropy(hidden: torch.Tensor, weight: torch.Tensor, chunk_size: int = 256,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of softmax(W h + b) at each position: [N, H] -> [N] fp32, in chunks, with the
    closed-form gradient dH/dz = -p (log p + H). What the entropy regularizer needs."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def values(logits):
        return token_entropy(torch.log_softmax(logits.float(), -1))

    def grads(hidden, weight, bias, grad_out):
        s = torch.log_softmax(F.linear(hidden, weight, bias).float(), -1)
        p = s.exp()
        entropy = -torch.bmm(p.unsqueeze(1), s.unsqueeze(2)).view(-1, 1)
        return s.add_(entropy).mul_(p).neg_().mul_(grad_out[:, None])

    return _ChunkedFromLogits.apply(hidden, weight, bias, values, grads, chunk_size)


# ----------------------------------------------------------------------------- top-k with a tail bucket

def tail_bucket(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] log-probs of k tokens -> [N, k + 1]: the same plus log(1 - their total mass)."""
    total = torch.logsumexp(topk_logprobs, -1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(total)).clamp(min=TINY))
    return torch.cat([topk_logprobs, tail], -1)


@torch.no_grad()
def teacher_topk(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, k: int, chunk_size: int = 256,
                 teacher_bias: torch.Tensor | None = None,
                 teacher_log_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens and their log-probs at each position: ([N, k] ids, [N, k] fp32)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, teacher_weight.shape[0])
    ids, logprobs = [], []
    for lo in range(0, len(teacher_hidden), chunk_size):
        sl = slice(lo, lo + chunk_size)
        lp = teacher_log_softmax(teacher_hidden[sl], teacher_weight, teacher_bias,
                                 None if teacher_log_weights is None else teacher_log_weights[sl])
        top = lp.topk(k, -1)
        ids.append(top.indices)
        logprobs.append(top.values)
    if not ids:
        empty = teacher_hidden.new_zeros((0, k))
        return empty.long(), empty.float()
    return torch.cat(ids), torch.cat(logprobs)


def topk_tail_divergence(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_ids: torch.Tensor,
                         teacher_logprobs: torch.Tensor, kind: str = "reverse_kl", chunk_size: int = 256,
                         student_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position divergence [N] between student and teacher coarsened to the teacher's top-k tokens
    plus one tail bucket (see the module docstring). The student's full-vocabulary normaliser is
    still computed, in chunks; the teacher enters only through [N, k]."""
    _check(kind, chunk_size)

    def values(logits, ids, teacher_lp):
        student = torch.log_softmax(logits.float(), -1).gather(-1, ids)
        return token_divergence(tail_bucket(student), tail_bucket(teacher_lp.float()), kind)

    return _ChunkedFromLogits.apply(student_hidden, student_weight, student_bias, values,
                                    autograd_logits_grad(values), chunk_size, teacher_ids.detach(),
                                    teacher_logprobs.detach())


def divergence(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
               teacher_weight: torch.Tensor, kind: str = "reverse_kl", approximation: str = "full",
               chunk_size: int = 256, topk: int = 64, student_bias: torch.Tensor | None = None,
               teacher_bias: torch.Tensor | None = None,
               teacher_log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One entry point for both forms: `approximation` is "full" (exact) or "topk_tail" (k = `topk`)."""
    if approximation == "full":
        return chunked_divergence(student_hidden, teacher_hidden, student_weight, teacher_weight, kind, chunk_size,
                                  student_bias, teacher_bias, teacher_log_weights)
    if approximation == "topk_tail":
        ids, logprobs = teacher_topk(teacher_hidden, teacher_weight, topk, chunk_size, teacher_bias,
                                     teacher_log_weights)
        return topk_tail_divergence(student_hidden, student_weight, ids, logprobs, kind, chunk_size, student_bias)
    raise ValueError(f"unknown approximation '{approximation}'; allowed: {', '.join(APPROXIMATIONS)}")


def chunked_divergence_with(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                            teacher_weight: torch.Tensor, kind: str, alpha: float = 0.5, topk: int = 0,
                            topk_of: str = "teacher", chunk_size: int = 256, student_bias: torch.Tensor | None = None,
                            teacher_bias: torch.Tensor | None = None,
                            teacher_log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """`ops.divergence_with` (the generalised JSD, top-k of the teacher's or the student's distribution
    with a tail bucket) per position [N], in chunks: the teacher's log-probs are recomputed per chunk
    and the gradient with respect to the logits comes from autograd on each chunk (no closed form;
    about twice the [C, V] buffers of `chunked_divergence`). Values equal those of the full tensors."""
    teacher_weight = teacher_weight.detach()
    teacher_bias = None if teacher_bias is None else teacher_bias.detach()
    hidden = teacher_hidden.detach()
    log_w = None if teacher_log_weights is None else teacher_log_weights.detach()

    def teacher(idx):
        return teacher_log_softmax(hidden[idx], teacher_weight, teacher_bias, None if log_w is None else log_w[idx])

    return chunked_divergence_to(student_hidden, student_weight, teacher, kind, alpha, topk, topk_of, chunk_size,
                                 student_bias)


def chunked_divergence_to(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher, kind: str,
                          alpha: float = 0.5, topk: int = 0, topk_of: str = "teacher", chunk_size: int = 256,
                          student_bias: torch.Tensor | None = None) -> torch.Tensor:
    """`ops.divergence_with` per position [N] to any target given as `teacher(idx) -> [C, V]` log-probs
    of the positions idx (a LongTensor), in chunks, with autograd's gradient per chunk."""
    if kind not in DISTILL_DIVERGENCES:
        raise ValueError(f"unknown divergence '{kind}'; allowed: {', '.join(DISTILL_DIVERGENCES)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def values(logits, idx):
        with torch.no_grad():
            target = teacher(idx)
        return divergence_with(torch.log_softmax(logits.float(), -1), target, kind, alpha, topk, topk_of)

    index = torch.arange(len(student_hidden), device=student_hidden.device)
    return _ChunkedFromLogits.apply(student_hidden, student_weight, student_bias, values, autograd_logits_grad(values),
                                    chunk_size, index)


# ----------------------------------------------------------------------------- the Scores interface

class HiddenScores:
    """`mitigate.policies.base.Scores` from last hidden states: B completions' hidden states
    [B, T, H] (after the final norm, at the positions predicting each token), the mask of real
    positions, the tokens and the output projection (W [V, H], b). Every per-token quantity is
    computed over the masked positions only, in chunks of `chunk_size`, and is 0 elsewhere; nothing
    [B, T, V] is built except by `materialise`.

    A stop-gradient target (a teacher, the reference) is made under no-grad with a projection that
    does not change while it is used: `HFPolicy.scores` copies a trainable one (a live teacher's)
    and refers to a frozen one (the reference; an EMA teacher, updated only after the step whose
    targets it made). A mixture of targets
    (`mixture`) holds their hidden states [M, B, T, H] and log-weights [M, B, T]."""

    def __init__(self, hidden: torch.Tensor, keep: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, chunk_size: int = 256, approximation: str = "full",
                 topk: int = 64, log_weights: torch.Tensor | None = None):
        self.hidden, self.keep, self.tokens = hidden, keep.bool(), tokens
        self.weight, self.bias, self.log_weights = weight, bias, log_weights
        self.chunk_size, self.approximation, self.topk = chunk_size, approximation, topk

    def _rows(self) -> torch.Tensor:
        """Hidden states of the masked positions: [N, H], or [N, M, H] for a mixture."""
        if self.log_weights is None:
            return self.hidden[self.keep]
        return self.hidden[:, self.keep].transpose(0, 1)

    def _row_log_weights(self) -> torch.Tensor | None:
        return None if self.log_weights is None else self.log_weights[:, self.keep].T

    def _scatter(self, per_token: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.keep.shape, dtype=per_token.dtype, device=per_token.device)
        return out.masked_scatter(self.keep, per_token)

    def _target_rows(self, fn) -> torch.Tensor:
        """`fn(log-probs [C, V], tokens [C])` over chunks of a mixture (always a no-grad target)."""
        rows, log_w, tokens = self._rows(), self._row_log_weights(), self.tokens[self.keep]
        with torch.no_grad():
            parts = [fn(teacher_log_softmax(rows[lo:lo + self.chunk_size], self.weight, self.bias,
                                            log_w[lo:lo + self.chunk_size]), tokens[lo:lo + self.chunk_size])
                     for lo in range(0, len(rows), self.chunk_size)]
        return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float32)

    def token_logprobs(self) -> torch.Tensor:
        if self.log_weights is not None:
            return self._scatter(self._target_rows(lambda lp, ids: lp.gather(-1, ids[:, None])[:, 0]))
        return self._scatter(chunked_token_logprobs(self._rows(), self.weight, self.tokens[self.keep],
                                                    self.chunk_size, self.bias))

    def entropy(self) -> torch.Tensor:
        if self.log_weights is not None:
            return self._scatter(self._target_rows(lambda lp, ids: token_entropy(lp)))
        return self._scatter(chunked_entropy(self._rows(), self.weight, self.chunk_size, self.bias))

    def divergence(self, target: HiddenScores, kind: str = "reverse_kl", alpha: float = 0.5, topk: int = 0,
                   topk_of: str = "teacher") -> torch.Tensor:
        """Per-token divergence to `target` (same completions and mask) with this policy's
        `approximation` (exact "full", or "topk_tail"). `alpha` (kind "gjsd") and `topk` > 0 (top-k of
        `topk_of`'s distribution plus a tail bucket) go through `chunked_divergence_with`; a
        `GeometricTarget` through `chunked_divergence_to`."""
        if isinstance(target, GeometricTarget):
            if self.log_weights is not None:
                raise ValueError("a mixture is a target only")
            if not torch.equal(self.keep, target.keep):
                raise ValueError("student and target scores must cover the same completion positions (same mask)")
            if not topk and self.approximation == "topk_tail":
                topk, topk_of = self.topk, "teacher"
            return self._scatter(chunked_divergence_to(self._rows(), self.weight, target.row_logprobs, kind, alpha,
                                                       topk, topk_of, self.chunk_size, self.bias))
        if not isinstance(target, HiddenScores):
            raise TypeError(f"HiddenScores.divergence needs HiddenScores as its target, got {type(target).__name__}")
        if self.log_weights is not None:
            raise ValueError("a mixture is a target only")
        if not torch.equal(self.keep, target.keep):
            raise ValueError("student and target scores must cover the same completion positions (same mask)")
        if kind in DIVERGENCES and not topk:
            per_token = divergence(self._rows(), target._rows(), self.weight, target.weight, kind, self.approximation,
                                   self.chunk_size, self.topk, self.bias, target.bias, target._row_log_weights())
        else:
            if not topk and self.approximation == "topk_tail":
                topk, topk_of = self.topk, "teacher"
            per_token = chunked_divergence_with(self._rows(), target._rows(), self.weight, target.weight, kind, alpha,
                                                topk, topk_of, self.chunk_size, self.bias, target.bias,
                                                target._row_log_weights())
        return self._scatter(per_token)

    def materialise(self) -> torch.Tensor:
        if self.log_weights is None:
            return log_softmax_logits(self.hidden, self.weight, self.bias)
        lp = torch.stack([log_softmax_logits(h, self.weight, self.bias) for h in self.hidden])
        return log_mixture(self.log_weights.float(), lp)

    def rows(self, lo: int, hi: int) -> HiddenScores:
        if self.log_weights is not None:
            raise ValueError("rows of a mixture: take the rows of its targets before mixing them")
        return HiddenScores(self.hidden[lo:hi], self.keep[lo:hi], self.tokens[lo:hi], self.weight, self.bias,
                            self.chunk_size, self.approximation, self.topk)

    @classmethod
    def geometric(cls, targets: list[HiddenScores], coefs: list[float]) -> GeometricTarget:
        """softmax(sum_m c_m log p_m) of M no-grad targets (weights may differ: a live teacher's copy and
        the frozen reference): `GeometricTarget`."""
        return GeometricTarget(targets, coefs)

    @classmethod
    def mixture(cls, targets: list[HiddenScores], log_weights: torch.Tensor) -> HiddenScores:
        """The mixture of M no-grad targets of one set of weights; log-weights [M, B, T]."""
        first = targets[0]
        if any(t.log_weights is not None or t.weight is not first.weight or t.bias is not first.bias
               or not torch.equal(t.keep, first.keep) for t in targets):
            raise ValueError("a mixture needs plain targets of the same weights on the same completion positions")
        return cls(torch.stack([t.hidden.detach() for t in targets]), first.keep, first.tokens, first.weight,
                   first.bias, first.chunk_size, first.approximation, first.topk, log_weights.detach())


class GeometricTarget:
    """A stop-gradient target whose log-probs are softmax(sum_m c_m log p_m) of M plain `HiddenScores`
    targets on the same completion positions, each with its own projection (`sdsd_interp`: the
    demonstration teacher and the frozen base). Since log p_m = z_m - logsumexp(z_m), this is
    softmax(sum_m c_m z_m) with z_m = W_m h_m + b_m: computed per chunk of positions, never [B, T, V]
    except by `materialise`. A target only: `divergence` is the student's (`HiddenScores.divergence`)."""

    def __init__(self, targets: list[HiddenScores], coefs: list[float]):
        first = targets[0]
        if len(targets) != len(coefs) or any(t.log_weights is not None or not torch.equal(t.keep, first.keep)
                                             for t in targets):
            raise ValueError("a geometric target needs plain targets on the same completion positions, one "
                             "coefficient each")
        self.targets, self.coefs = targets, [float(c) for c in coefs]
        self.keep, self.tokens, self.chunk_size = first.keep, first.tokens, first.chunk_size
        self._hidden = [t.hidden.detach()[t.keep] for t in targets]  # [N, H] each: the masked positions

    def row_logprobs(self, idx: torch.Tensor) -> torch.Tensor:
        """[C, V] log-probs at the masked positions idx (no grad)."""
        with torch.no_grad():
            z = sum(c * F.linear(h[idx].to(t.weight.dtype), t.weight.detach(),
                                 None if t.bias is None else t.bias.detach()).float()
                    for c, h, t in zip(self.coefs, self._hidden, self.targets))
            return torch.log_softmax(z, -1)

    def _per_row(self, fn) -> torch.Tensor:
        n = len(self._hidden[0])
        parts = [fn(self.row_logprobs(torch.arange(lo, min(lo + self.chunk_size, n), device=self.keep.device)), lo)
                 for lo in range(0, n, self.chunk_size)]
        values = torch.cat(parts) if parts else torch.zeros(0)
        out = torch.zeros(self.keep.shape, dtype=values.dtype, device=values.device)
        return out.masked_scatter(self.keep, values)

    def token_logprobs(self) -> torch.Tensor:
        ids = self.tokens[self.keep]
        return self._per_row(lambda lp, lo: lp.gather(-1, ids[lo:lo + len(lp), None])[:, 0])

    def entropy(self) -> torch.Tensor:
        return self._per_row(lambda lp, lo: token_entropy(lp))

    def divergence(self, target, kind: str = "reverse_kl", **options) -> torch.Tensor:
        raise ValueError("a geometric target is a target only")

    def materialise(self) -> torch.Tensor:
        z = sum(c * F.linear(t.hidden.detach().to(t.weight.dtype), t.weight.detach(),
                             None if t.bias is None else t.bias.detach()).float()
                for c, t in zip(self.coefs, self.targets))
        return torch.log_softmax(z, -1)
