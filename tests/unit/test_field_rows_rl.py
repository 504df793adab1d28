"""The RL-side rows the field asks for (issue 25), each against brute force: negative-only GRPO,
the pass@k advantage (enumeration of every k-subset), the unlikeliness reward (ranks and ties),
clip-higher and the covariance options, rejection-sampling fine-tuning, and `sdsd_cmi`'s
constant-weight control."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch

from mitigate import config as C
from mitigate.objectives import OBJECTIVES, Batch
from mitigate.objectives.base import make_term
from mitigate.objectives.grpo import clipped_surrogate, top_covariance
from mitigate.objectives.grpo_passk import passk_advantages
from mitigate.objectives.grpo_unlikely import likelihood_ranks, unlikeliness_rewards
from mitigate.objectives.rft import kept_samples
from mitigate.objectives.sdsd_cmi import class_means
from mitigate.policies import FullScores
from mitigate.recipes.train import train


def _term(name, **fields):
    entry = OBJECTIVES.get(name)
    return make_term(entry), C.build(entry.config, {"name": name, **fields})


def toy_batch(correct, G, seed=0, T=5, V=7):
    """A batch of len(correct) rollouts in groups of G with random student log-probs (leaf logits)."""
    g = torch.Generator().manual_seed(seed)
    B = len(correct)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    lp = logits.log_softmax(-1)
    scores = FullScores(lp, tokens)
    old = (scores.token_logprobs() + 0.3 * torch.randn(B, T, generator=g)).detach()
    c = torch.as_tensor(correct, dtype=torch.bool)
    batch = Batch(prompts=list(range(B // G)), group_index=torch.arange(B // G).repeat_interleave(G), contexts=[],
                  tokens=tokens, mask=mask, rewards=c.float(), correct=c, labels=torch.where(c, 0, -1),
                  scores=scores, old_token_logprobs=old, reference=FullScores(lp.detach(), tokens))
    return batch, logits


# --------------------------------------------------------------------------- negative-only GRPO
def test_negative_only_grpo_gives_correct_rollouts_exactly_zero_gradient():
    correct = [1, 0, 0, 1, 1, 0, 0, 0]
    batch, logits = toy_batch(correct, G=4)
    fn, cfg = _term("grpo_negative")
    loss, _ = fn(batch, None, cfg)
    loss.backward()
    rows = torch.as_tensor(correct, dtype=torch.bool)
    assert torch.count_nonzero(logits.grad[rows]) == 0
    assert torch.count_nonzero(logits.grad[~rows]) > 0
    # and its incorrect rows get GRPO's own gradient
    batch2, logits2 = toy_batch(correct, G=4)
    fn, cfg = _term("grpo")
    loss2, _ = fn(batch2, None, cfg)
    loss2.backward()
    torch.testing.assert_close(logits.grad[~rows], logits2.grad[~rows])
    assert not torch.equal(logits2.grad[rows], torch.zeros_like(logits2.grad[rows]))


# --------------------------------------------------------------------------- pass@k advantage
def enumerate_passk(correct: list[int], k: int) -> np.ndarray:
    """Mean over the k-subsets holding each rollout of (r_S - mean r_S) / std r_S, by enumeration."""
    G = len(correct)
    subsets = list(combinations(range(G), k))
    r = np.array([max(correct[i] for i in s) for s in subsets], float)
    mean, std = r.mean(), r.std()
    if std < 1e-12:
        return np.zeros(G)
    return np.array([np.mean([(r[j] - mean) / std for j, s in enumerate(subsets) if i in s]) for i in range(G)])


@pytest.mark.parametrize("G", [2, 3, 5, 8])
def test_passk_advantage_equals_enumeration_of_every_k_subset(G):
    rng = np.random.default_rng(G)
    for k in range(1, G + 1):
        for _ in range(6):
            correct = rng.integers(0, 2, G).tolist()
            got = passk_advantages(torch.as_tensor(correct, dtype=torch.bool), torch.zeros(G, dtype=torch.long), k)
            np.testing.assert_allclose(got.numpy(), enumerate_passk(correct, k), atol=1e-10)


def test_passk_at_k1_is_grpo_with_the_population_std_and_too_large_k_is_refused():
    correct = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    got = passk_advantages(correct, torch.zeros(6, dtype=torch.long), 1)
    r = correct.double()
    np.testing.assert_allclose(got.numpy(), ((r - r.mean()) / r.std(unbiased=False)).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="larger than the group size"):
        passk_advantages(correct, torch.zeros(6, dtype=torch.long), 7)


# --------------------------------------------------------------------------- unlikeliness reward
def test_unlikeliness_ranks_break_ties_by_their_mean_and_skip_incorrect_rows():
    seq = torch.tensor([-1.0, -3.0, -2.0, -2.0, -0.5, -9.0, -4.0, -4.0])
    correct = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    ranks = likelihood_ranks(seq, correct, groups)
    # group 0, correct: -1 (rank 0), -2 and -2 (ranks 1, 2 -> 1.5 each), -3 (rank 3); group 1: a tie of two
    expected = [0.0, 3.0, 1.5, 1.5, np.nan, np.nan, 0.5, 0.5]
    np.testing.assert_allclose(ranks.numpy(), expected)
    rewards = unlikeliness_rewards(seq, correct, groups, beta=0.25)
    G0, G1 = 5, 3
    np.testing.assert_allclose(rewards.numpy(), [1 - 0.25 * (G0 - 0) / G0, 1 - 0.25 * (G0 - 3) / G0,
                                                 1 - 0.25 * (G0 - 1.5) / G0, 1 - 0.25 * (G0 - 1.5) / G0, 0, 0,
                                                 1 - 0.25 * (G1 - 0.5) / G1, 1 - 0.25 * (G1 - 0.5) / G1])
    assert rewards[correct].min() > 0  # every correct rollout still beats every incorrect one


def test_unlikeliness_at_beta_zero_is_grpo():
    correct = [1, 0, 1, 1, 0, 0, 1, 0]
    out = []
    for name, fields in (("grpo_unlikely", {"beta": 0.0}), ("grpo", {})):
        batch, logits = toy_batch(correct, G=4)
        fn, cfg = _term(name, **fields)
        fn(batch, None, cfg)[0].backward()
        out.append(logits.grad)
    torch.testing.assert_close(out[0], out[1])


# --------------------------------------------------------------------------- clip-higher, covariance
def test_clip_higher_lets_the_ratio_grow_further_only_above():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([1.0])
    sym, clipped_sym = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    high, clipped_high = clipped_surrogate(logp, old, adv, 0.2, 0.6)
    torch.testing.assert_close(sym, -torch.tensor([[1.2, 0.5, 1.1]]))
    torch.testing.assert_close(high, -torch.tensor([[1.5, 0.5, 1.1]]))
    assert clipped_sym.tolist() == [[True, True, False]] and clipped_high.tolist() == [[False, True, False]]


def test_top_covariance_picks_the_largest_centred_products_among_valid_tokens():
    logp = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -3.0, -0.1]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    picked = top_covariance(logp, adv, mask, 0.4)  # ceil(0.4 * 5) = 2 tokens
    lp = logp[mask > 0]
    a = adv[:, None].expand_as(logp)[mask > 0]
    cov = (lp - lp.mean()) * (a - a.mean())
    best = set(torch.topk(cov, 2).indices.tolist())
    flat = torch.nonzero(mask.flatten() > 0).flatten()
    assert set(torch.nonzero(picked.flatten()).flatten().tolist()) == {int(flat[i]) for i in best}
    assert not picked[1, 2]


def test_clip_cov_removes_the_gradient_of_exactly_the_picked_tokens():
    correct = [1, 0, 0, 1]
    grads = {}
    for frac in (0.0, 0.25):
        batch, logits = toy_batch(correct, G=4)
        fn, cfg = _term("grpo", cov_clip_frac=frac)
        fn(batch, None, cfg)[0].backward()
        grads[frac] = logits.grad
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0]) / torch.tensor([1.0, 0, 0, 1]).std()
    picked = top_covariance(batch.token_logprobs().detach(), adv, batch.mask, 0.25)
    assert int(picked.sum()) == 5  # ceil(0.25 * 18 valid tokens)
    assert torch.count_nonzero(grads[0.25][picked]) == 0 and torch.count_nonzero(grads[0.0][picked]) > 0
    torch.testing.assert_close(grads[0.25][~picked], grads[0.0][~picked])


# --------------------------------------------------------------------------- RFT
def test_rft_keeps_each_prompts_distinct_correct_samples_in_order():
    class Q:
        def __init__(self, t):
            self.tokens = t

    prompts = [Q([1]), Q([2])]
    tokens = np.array([[5, 6], [5, 6], [7, 8], [9, 9], [5, 6], [3, 3]])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    contexts, rows = kept_samples(tokens, correct, prompts, 3, distinct=True)
    assert [r.tolist() for r in rows] == [[5, 6], [7, 8], [5, 6]] and contexts == [[1], [1], [2]]
    _, rows = kept_samples(tokens, correct, prompts, 3, distinct=False)
    assert [r.tolist() for r in rows] == [[5, 6], [5, 6], [7, 8], [5, 6]]


def test_rows_train_end_to_end_and_rft_counts_its_base_samples(smoke_base, tmp_path):
    for name, fields in (("rft", {"samples": 4}), ("grpo_passk", {"k": 2}), ("grpo_unlikely", {}),
                         ("grpo_negative", {}), ("grpo", {"clip_eps_high": 0.28, "cov_kl_frac": 0.02})):
        objective = json.dumps({"name": name, **fields})
        cfg = C.load(preset="smoke", overrides=["train.steps=2", f"train.objective={objective}"])
        run = train(cfg, smoke_base, tmp_path / name, quiet=True)
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert np.isfinite(last["loss"])
        if name == "rft":
            budget = json.loads((run / "budget.json").read_text())
            assert budget["reference_generations"] >= 2 * cfg.train.prompts_per_step * 4


# --------------------------------------------------------------------------- sdsd_cmi constant control
def test_constant_weights_replace_each_class_by_its_mean():
    values = torch.tensor([1.0, 3.0, -2.0, -4.0, 7.0])
    correct = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    incorrect = torch.tensor([0, 0, 1, 1, 0], dtype=torch.bool)  # the last row has no demonstration
    torch.testing.assert_close(class_means(values, correct, incorrect), torch.tensor([2.0, 2.0, -3.0, -3.0, 7.0]))
    equal = torch.tensor([2.0, 2.0, -3.0, -3.0, 7.0])
    torch.testing.assert_close(class_means(equal, correct, incorrect), equal)
