"""Demonstration selection: which correct rollout the self-distillation teacher is conditioned on.

Every SDSD-family objective has a `demo_rule` config field (default `uniform`, the package's rule
since the start). For rollout i of prompt x, with C_g the correct rollouts of its group:

    uniform       uniform over C_g minus row i (with replacement, m draws); row i itself when it is the
                  group's sole correct rollout (`ops.pick_demonstrations`, draws unchanged).
    first         the first row of C_g other than row i, for all m columns: what the public SDPO
                  trainers do (their `dont_reprompt_on_self_success`, on by default). A group's sole
                  correct rollout gets NO demonstration (masked), as there.
    distinct      uniform over the DISTINCT outputs among C_g minus row i (duplicates merged before
                  drawing, each output represented by its first row); row i itself when sole.
    least_likely  the row of C_g minus row i whose sequence log-prob under the sampling policy
                  (`batch.old_token_logprobs`: the model's own, untempered) is lowest (ties: the
                  first row); row i itself when sole.
    buffer        uniform over a FIFO buffer of correct completions of the same prompt kept from
                  earlier steps (`demo_buffer_size` per prompt, keyed by the prompt's tokens); the
                  group's `uniform` rule while the prompt's buffer is empty. A step's correct
                  rollouts enter the buffer when the next step draws.
    other_prompt  the control: uniform over the correct rollouts of the OTHER prompts of the step (a
                  demonstration for a different question); masked when no other prompt has one.

Fixed points (one prompt, demonstrations iid given the group; `mitigate.theory.objective_field`'s
`demo_rule`): SDSD's optimum is the per-prefix geometric mean of teachers weighted by the rule's
demonstration law D(y*), p(y) ∝ exp(E_{y*~D} log T(y | y*)) (plus the self-demonstration term).
With k ~ Binomial(G - 1, pi(C)) correct other rollouts and u = pi(. | C):

    uniform, first        D = u on the event k >= 1 (first: by exchangeability the first correct
                          other rollout is a draw from u); they differ in the sole-correct case only
    distinct              D(z) = E[1[z in S_k] / |S_k|], S_k the set of outputs of k draws from u:
                          flatter than u, so the tilt toward likely demonstrations is weaker
    least_likely          D(z) = U(>= z)^k - U(> z)^k, U(>= z) the u-mass of outputs at least as
                          likely as z: the least likely of k draws, the tilt points toward rare outputs
    buffer                at a stationary policy the buffer holds draws from u: D = u for every
                          rollout (no masked groups once the buffer is filled)

Demonstrations are returned as row indices [B, m]: i < B is row i of the batch, i >= B is entry
i - B of the extra completions a rule adds (the buffer's), -1 none.
"""

from __future__ import annotations

import torch

from mitigate.ops import pick_demonstrations

DEMO_RULES = ("uniform", "first", "distinct", "least_likely", "buffer", "other_prompt")


def _groups(group_index: torch.Tensor, correct: torch.Tensor):
    """(members [n] rows, good [c] correct rows) per group, in row order."""
    for g in torch.unique(group_index).tolist():
        members = torch.nonzero(group_index == g).flatten()
        yield members, members[correct[members]]


def _others(good: torch.Tensor, i: int, self_when_sole: bool = True) -> torch.Tensor:
    """The correct rows other than row i; row i itself when it is the sole one (if `self_when_sole`)."""
    pool = good[good != i]
    if len(pool) == 0 and self_when_sole:
        return good
    return pool


def pick_first(group_index: torch.Tensor, correct: torch.Tensor, m: int) -> torch.Tensor:
    """`first`: [B, m] the first correct row of the group other than the row itself; -1 for a group's
    sole correct rollout and for groups with no correct rollout."""
    out = torch.full((len(group_index), m), -1, dtype=torch.long)
    for members, good in _groups(group_index, correct):
        for i in members.tolist():
            pool = _others(good, i, self_when_sole=False)
            if len(pool):
                out[i] = pool[0]
    return out


def pick_distinct(group_index: torch.Tensor, correct: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                  m: int, generator: torch.Generator) -> torch.Tensor:
    """`distinct`: [B, m] uniform (with replacement) over the distinct outputs among the group's correct
    rows other than the row itself (each output drawn as its first row); itself when sole; -1 none."""
    out = torch.full((len(group_index), m), -1, dtype=torch.long)
    keys = [tuple(r) for r in (tokens * mask.to(tokens.dtype)).tolist()]
    for members, good in _groups(group_index, correct):
        for i in members.tolist():
            pool = _others(good, i)
            if len(pool) == 0:
                continue
            first: dict[tuple, int] = {}
            for j in pool.tolist():
                first.setdefault(keys[j], j)
            reps = torch.tensor(list(first.values()), dtype=torch.long)
            out[i] = reps[torch.randint(len(reps), (m,), generator=generator)]
    return out


def pick_least_likely(group_index: torch.Tensor, correct: torch.Tensor, seq_logprobs: torch.Tensor,
                      m: int) -> torch.Tensor:
    """`least_likely`: [B, m] the group's correct row other than the row itself with the lowest
    sequence log-prob `seq_logprobs` [B] (ties: the first row); itself when sole; -1 none."""
    out = torch.full((len(group_index), m), -1, dtype=torch.long)
    for members, good in _groups(group_index, correct):
        for i in members.tolist():
            pool = _others(good, i)
            if len(pool):
                out[i] = pool[int(torch.argmin(seq_logprobs[pool]))]  # argmin returns the first minimum
    return out


def pick_other_prompt(group_index: torch.Tensor, correct: torch.Tensor, m: int,
                      generator: torch.Generator) -> torch.Tensor:
    """`other_prompt`: [B, m] uniform (with replacement) over the correct rows of the other groups; -1
    when no other group has a correct row."""
    out = torch.full((len(group_index), m), -1, dtype=torch.long)
    for members, _ in _groups(group_index, correct):
        pool = torch.nonzero(correct & (group_index != group_index[members[0]])).flatten()
        if len(pool) == 0:
            continue
        for i in members.tolist():
            out[i] = pool[torch.randint(len(pool), (m,), generator=generator)]
    return out


class DemoBuffer:
    """`buffer`: correct completions per prompt (keyed by the prompt's token context) from earlier
    steps, at most `size` each, oldest dropped first. A step's correct rollouts enter the buffer when
    the next step first draws, so every draw of a step (several objectives or M columns alike) sees
    earlier steps only. Lives in the run's `Teacher`; it is not part of a resume checkpoint, so a run
    with this rule refuses to resume (`Teacher.demonstrations`)."""

    def __init__(self, size: int):
        self.size, self.entries = size, {}
        self.step, self.pending = None, []

    def pick(self, batch, m: int, generator: torch.Generator,
             step: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """([B, m] indices (>= B: into the returned completions), the buffered completions drawn from).
        Prompts with an empty buffer use `uniform` over their group (the same draws
        `ops.pick_demonstrations` would make for them)."""
        if step is None or step != self.step:
            self._commit()
            self.step = step
            self.pending = [(self._key(batch, int(members[0])), [batch.tokens[j].detach().clone() for j in good])
                            for members, good in _groups(batch.group_index, batch.correct) if len(good)]
        b = len(batch.group_index)
        out = pick_demonstrations(batch.group_index, batch.correct, m, generator)
        extra: list[torch.Tensor] = []
        for members, _ in _groups(batch.group_index, batch.correct):
            stored = self.entries.get(self._key(batch, int(members[0])), [])
            if not stored:
                continue
            offset = b + len(extra)
            extra += stored
            for i in members.tolist():
                out[i] = offset + torch.randint(len(stored), (m,), generator=generator)
        return out, extra

    def _commit(self) -> None:
        for key, rows in self.pending:
            stored = self.entries.setdefault(key, [])
            stored += rows
            del stored[:max(0, len(stored) - self.size)]
        self.pending = []

    @staticmethod
    def _key(batch, row: int) -> tuple:
        return tuple(batch.contexts[row])


def pick(rule: str, batch, m: int, generator: torch.Generator, buffer: DemoBuffer | None = None,
         step: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """([B, m] demonstration indices, extra completions indexed from B) under `rule`."""
    if rule == "uniform":
        return pick_demonstrations(batch.group_index, batch.correct, m, generator), []
    if rule == "first":
        return pick_first(batch.group_index, batch.correct, m), []
    if rule == "distinct":
        return pick_distinct(batch.group_index, batch.correct, batch.tokens, batch.mask, m, generator), []
    if rule == "least_likely":
        seq = (batch.old_token_logprobs.detach() * batch.mask).sum(-1)
        return pick_least_likely(batch.group_index, batch.correct, seq, m), []
    if rule == "other_prompt":
        return pick_other_prompt(batch.group_index, batch.correct, m, generator), []
    if rule == "buffer":
        if buffer is None:
            raise ValueError("demo_rule 'buffer' needs the run's DemoBuffer")
        return buffer.pick(batch, m, generator, step)
    raise ValueError(f"unknown demo_rule '{rule}'; allowed: {', '.join(DEMO_RULES)}")
