"""The training probe's collapse metrics (`mitigate.recipes.train.probe`): pass@n and the
accuracy-free concepts@r come from the same samples as pass@1 (no extra draw), concepts@r averages
`distinct_among` over the prompts with at least r correct and is None when none has."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mitigate import config as C
from mitigate.metrics import distinct_among, pass_at_k
from mitigate.recipes import train as T

# 3 prompts x 8 samples: correct flags and the concept label of each sample (-1: incorrect)
CORRECT = np.array([[1, 1, 1, 1, 1, 1, 1, 1],
                    [1, 1, 1, 1, 1, 0, 0, 0],
                    [0, 0, 0, 0, 0, 0, 0, 0]], dtype=bool)
LABELS = np.array([[0, 0, 0, 1, 1, 2, 0, 0],
                   [3, 3, 4, 4, 4, -1, -1, -1],
                   [-1] * 8])


class Task:
    val_split = "val"

    def prompts(self, split):
        return list(range(5))  # more than probe_prompts: the probe takes the first ones


@pytest.fixture()
def probe(monkeypatch):
    calls = []

    def fake_generate(policy, task, prompts, n, temperature, generator, batch_size):
        calls.append((list(prompts), n))
        return SimpleNamespace(correct=CORRECT.reshape(-1), labels=LABELS.reshape(-1),
                               token_entropy=torch.full((CORRECT.size,), 0.25))

    monkeypatch.setattr(T, "generate", fake_generate)

    def run(r: int):
        cfg = C.load(preset="smoke")
        cfg.train.probe_prompts, cfg.train.probe_samples = 3, 8
        cfg.eval.diversity_r = r
        return T.probe(None, Task(), cfg, torch.Generator()), calls

    return run


def test_probe_adds_pass_at_n_and_concepts_at_r_from_the_same_samples(probe):
    out, calls = probe(4)
    assert calls == [([0, 1, 2], 8)]  # one draw, as before
    c = CORRECT.sum(1)
    assert out["probe_pass_at_1"] == pytest.approx(np.mean([pass_at_k(8, int(x), 1) for x in c]))
    assert out["probe_pass_at_n"] == pytest.approx(2 / 3)  # two of three prompts have a correct sample
    assert out["probe_pass_at_n"] == pytest.approx(np.mean([pass_at_k(8, int(x), 8) for x in c]))
    assert out["probe_concepts"] == pytest.approx((3 + 2 + 0) / 3)  # unchanged definition
    # r = 4: prompts 0 (8 correct) and 1 (5 correct) qualify, prompt 2 does not
    expected = (distinct_among([0, 0, 0, 1, 1, 2, 0, 0], 4) + distinct_among([3, 3, 4, 4, 4], 4)) / 2
    assert out["probe_concepts_at_r"] == pytest.approx(expected)
    assert out["probe_token_entropy"] == pytest.approx(0.25)
    assert list(out)[:3] == ["probe_pass_at_1", "probe_concepts", "probe_token_entropy"]


def test_concepts_at_r_is_none_when_no_prompt_has_r_correct_or_r_is_0(probe):
    assert probe(8)[0]["probe_concepts_at_r"] == pytest.approx(distinct_among([0, 0, 0, 1, 1, 2, 0, 0], 8))
    assert probe(9)[0]["probe_concepts_at_r"] is None
    assert probe(0)[0]["probe_concepts_at_r"] is None
    assert not math.isnan(probe(1)[0]["probe_concepts_at_r"])
