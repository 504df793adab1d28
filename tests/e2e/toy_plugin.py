"""A second task and a second policy, defined entirely outside the package and registered on
import (`mitigate ... --import tests/e2e/toy_plugin.py`). Nothing under mitigate/ knows them.

Task `toy`: the prompt is a number x; a correct answer is one number y with (y - x) mod K in
{1, 2, 3}, followed by the end token; its label (the "strategy") is (y - x) mod K. Prompt numbers
and answer numbers are different tokens, so that even a bigram model can learn the task.
Policy `toy_bigram`: next-token logits from a table indexed by the previous token.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mitigate.core.fields import Section, opt
from mitigate.core.io import atomic_dir
from mitigate.policies import Samples, register_policy
from mitigate.tasks import Vocab, register_task

PAD, BOS, EOS, SEP, DEMO = 0, 1, 2, 3, 4
STEPS = (1, 2, 3)  # correct offsets


@dataclass
class ToyParams(Section):
    name: str = opt("toy", "registered task name")
    numbers: int = opt(8, "how many numbers (prompts and answers)", min=4)
    seed: int = opt(0, "pretraining data seed", min=0)
    pretrain_rows: int = opt(2000, "pretraining sequences", min=10)


@dataclass(frozen=True)
class ToyPrompt:
    x: int

    @property
    def tokens(self) -> list[int]:
        return [BOS, 5 + self.x]


@register_task("toy", ToyParams)
class ToyTask:
    train_split, val_split, test_split = "train", "val", "test"
    ood_splits = {"late": "ood_late"}

    def __init__(self, params: ToyParams):
        self.params, self.name = params, "toy"
        self.vocab = Vocab(size=5 + 2 * params.numbers, pad=PAD, bos=BOS, eos=EOS)
        self.max_new_tokens = 2

    def prompts(self, split: str) -> list[ToyPrompt]:
        k = self.params.numbers
        xs = {"train": range(k - 2), "val": range(k - 2), "test": range(k - 2), "ood_late": range(k - 2, k)}
        if split not in xs:
            raise ValueError(f"unknown split '{split}'; allowed: {', '.join(xs)}")
        return [ToyPrompt(x) for x in xs[split]]

    def verify(self, prompts, completions):
        comp = np.asarray(completions)
        x = np.array([q.x for q in prompts])
        y = comp[:, 0] - 5 - self.params.numbers
        offset = (y - x) % self.params.numbers
        ok = (y >= 0) & (comp[:, 1] == EOS) & np.isin(offset, STEPS)
        return ok, np.where(ok, offset, -1)

    def teacher_context(self, prompt, demonstration):
        return [DEMO, int(demonstration[0]), SEP, 5 + prompt.x]

    def rollout_features(self, completions, labels, label_weight=0.5):
        return np.eye(len(STEPS) + 1)[np.where(labels >= 0, labels, 0)] * (labels >= 0)[:, None]

    def pretraining_data(self):
        rng = np.random.default_rng(self.params.seed)
        n, k = self.params.pretrain_rows, self.params.numbers
        x = rng.integers(k, size=n)
        y = (x + rng.choice(STEPS, size=n, p=[0.7, 0.2, 0.1])) % k
        tokens = np.stack([np.full(n, BOS), 5 + x, 5 + k + y, np.full(n, EOS)], 1)
        mask = np.zeros_like(tokens, dtype=bool)
        mask[:, 2:] = True
        return tokens, mask


@dataclass
class BigramConfig(Section):
    name: str = opt("toy_bigram", "registered policy name")
    init_scale: float = opt(0.01, "std of the initial logits", min=0.0)


class BigramModel(torch.nn.Module):
    def __init__(self, vocab: int, init_scale: float = 0.0):
        super().__init__()
        self.table = torch.nn.Parameter(init_scale * torch.randn(vocab, vocab))


@register_policy("toy_bigram", BigramConfig)
class Bigram:
    def __init__(self, model: BigramModel, eos: int, pad: int):
        self.model = self.wrapped = model
        self.eos, self.pad = eos, pad

    @classmethod
    def build(cls, cfg: BigramConfig, task):
        return cls(BigramModel(task.vocab.size, cfg.init_scale), task.vocab.eos, task.vocab.pad)

    @classmethod
    def load(cls, folder, device="cpu"):
        meta = json.loads((Path(folder) / "mitigate.json").read_text())
        table = load_file(Path(folder) / "bigram.safetensors")["table"]
        model = BigramModel(table.shape[0])
        model.table.data.copy_(table)
        return cls(model.to(device), meta["eos"], meta["pad"])

    def _logprobs(self, prev: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.wrapped.table[prev], -1)

    @torch.no_grad()
    def sample(self, contexts, max_new_tokens, temperature=1.0, generator=None, batch_size=4096, progress=None):
        prev = torch.tensor([c[-1] for c in contexts])
        out = torch.full((len(contexts), max_new_tokens), self.pad)
        done = torch.zeros(len(contexts), dtype=torch.bool)
        ent = torch.zeros(len(contexts))
        for t in range(max_new_tokens):
            logp = torch.log_softmax(self.model.table[prev] / temperature, -1)
            ent += torch.where(done, 0.0, -(logp.exp() * logp).sum(-1)) / max_new_tokens
            nxt = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
            out[:, t] = torch.where(done, self.pad, nxt)
            done |= nxt == self.eos
            prev = nxt
        if progress is not None:
            progress.update(len(contexts))
        mask = self.completion_mask(out)
        return Samples(tokens=out.masked_fill(mask == 0, self.pad), mask=mask, token_entropy=ent)

    def logprobs(self, contexts, tokens, mask):
        last = torch.tensor([c[-1] for c in contexts], device=tokens.device)
        prev = torch.cat([last[:, None], tokens[:, :-1]], 1)
        return self._logprobs(prev)

    def completion_mask(self, tokens):
        is_eos = (tokens == self.eos).long()
        return ((is_eos.cumsum(-1) - is_eos) == 0).long()

    def frozen_copy(self):
        twin = Bigram(copy.deepcopy(self.model).requires_grad_(False), self.eos, self.pad)
        return twin

    def pretraining_loss(self, tokens, loss_mask):
        logp = self._logprobs(tokens[:, :-1]).gather(-1, tokens[:, 1:, None])[..., 0]
        m = loss_mask[:, 1:].float()
        return -(logp * m).sum() / m.sum()

    def save(self, folder, meta):
        with atomic_dir(folder) as tmp:
            save_file({"table": self.model.table.detach().contiguous().cpu()}, tmp / "bigram.safetensors")
            (tmp / "mitigate.json").write_text(json.dumps({"policy": "toy_bigram", "eos": self.eos, "pad": self.pad,
                                                           **meta}))
        return Path(folder)
