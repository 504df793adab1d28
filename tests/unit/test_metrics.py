"""pass@k against exact enumeration, its stability and validation; diversity metrics; bootstrap CIs."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from mitigate.metrics import (
    bootstrap_ci,
    ci_tree,
    effective_number,
    ks_up_to,
    mean_metrics,
    pass_at_k,
    prompt_metrics,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (the first c correct) holding at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return hits / len(subsets)


# ----------------------------------------------------------------------------- pass@k

@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_values():
    for n in (1, 5, 64):
        for k in range(1, n + 1):
            assert pass_at_k(n, 0, k) == 0.0  # no correct sample never passes (a classic bug)
            assert pass_at_k(n, n, k) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_accepts_numpy_integers():
    assert pass_at_k(np.int64(8), np.int64(2), np.int64(2)) == pytest.approx(brute_pass_at_k(8, 2, 2))


def test_pass_at_k_stable_for_large_n():
    n = 4096
    cs = [0, 1, 2, 7, 100, 1000, 2048, 4000, 4090, 4095, 4096]
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 1024, 4096]
    table = np.array([[pass_at_k(n, c, k) for k in ks] for c in cs])
    assert np.isfinite(table).all()
    assert (table >= 0).all() and (table <= 1).all()
    assert (np.diff(table, axis=1) >= -1e-12).all(), "pass@k must not decrease in k"
    assert (np.diff(table, axis=0) >= -1e-12).all(), "pass@k must not decrease in c"
    for i, c in enumerate(cs):
        for j, k in enumerate(ks):
            if n - c < k:
                assert table[i, j] == 1.0
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert table[i, j] == pytest.approx(float(exact), rel=1e-9, abs=1e-12), (c, k)


@pytest.mark.parametrize("n,c,k", [
    (4, 2, 5),    # k > n
    (4, 5, 1),    # c > n
    (4, -1, 1),   # negative c
    (4, 2, 0),    # k = 0
    (4, 2, -1),   # negative k
    (-4, 0, 1),   # negative n
    (0, 0, 1),    # no samples
])
def test_pass_at_k_rejects_bad_input(n, c, k):
    with pytest.raises(ValueError) as err:
        pass_at_k(n, c, k)
    assert str(k) in str(err.value) or str(c) in str(err.value) or str(n) in str(err.value)


def test_pass_at_k_rejects_non_integers():
    with pytest.raises(TypeError):
        pass_at_k(4, 1.5, 1)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 63, 64, 65, 128, 1000])
def test_ks_up_to(n):
    ks = ks_up_to(n)
    assert ks == [2 ** i for i in range(7) if 2 ** i <= n]
    assert ks[0] == 1 and max(ks) <= min(n, 64)
    assert 2 * max(ks) > min(n, 64)


# ----------------------------------------------------------------------------- diversity

def test_effective_number():
    assert effective_number([]) == 0.0
    assert effective_number(["a"] * 5) == pytest.approx(1.0)
    assert effective_number(list("abcd")) == pytest.approx(4.0)
    p = np.array([3, 1]) / 4
    assert effective_number(list("aaab")) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_prompt_metrics_hand_built():
    correct = np.array([True, True, False, True, True, False, True])
    outputs = [(5, 6), (5, 6), (7,), (8, 9), (10,), (5, 6), (8, 9)]
    concepts = np.array([0, 0, -1, 1, 1, -1, 1])
    m = prompt_metrics(correct, outputs, concepts, ks_up_to(7))
    assert set(m["pass_at_k"]) == {"1", "2", "4"}
    assert m["pass_at_k"]["1"] == pytest.approx(5 / 7)
    assert m["pass_at_k"]["4"] == pytest.approx(brute_pass_at_k(7, 5, 4))
    # correct outputs: (5,6) x2, (8,9) x2, (10,) x1 -> the incorrect (5,6) and (7,) do not count
    assert m["distinct_correct"] == 3.0
    p = np.array([2, 2, 1]) / 5
    assert m["effective_correct"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    # concepts among correct: 0 x2, 1 x3
    q = np.array([2, 3]) / 5
    assert m["concepts"] == 2.0
    assert m["concept_entropy"] == pytest.approx(-(q * np.log(q)).sum())
    assert m["top_concept_share"] == pytest.approx(3 / 5)


def test_prompt_metrics_single_concept_and_none_correct():
    one = prompt_metrics(np.array([True, True, True]), [(1,), (2,), (1,)], np.array([3, 3, 3]), [1, 2])
    assert one["concepts"] == 1.0 and one["concept_entropy"] == pytest.approx(0.0)
    assert one["distinct_correct"] == 2.0 and one["top_concept_share"] == 1.0
    none = prompt_metrics(np.zeros(4, bool), [(1,), (2,), (3,), (4,)], np.full(4, -1), [1, 2, 4])
    assert none["pass_at_k"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert none["distinct_correct"] == 0.0 and none["concepts"] == 0.0 and none["concept_entropy"] == 0.0
    assert math.isnan(none["top_concept_share"])


def test_mean_metrics_nested_and_nan_aware():
    rows = [
        prompt_metrics(np.array([True, False]), [(1,), (2,)], np.array([0, -1]), [1, 2]),
        prompt_metrics(np.array([False, False]), [(1,), (2,)], np.array([-1, -1]), [1, 2]),
        prompt_metrics(np.array([True, True]), [(1,), (2,)], np.array([0, 1]), [1, 2]),
    ]
    m = mean_metrics(rows)
    assert m["pass_at_k"]["1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["pass_at_k"]["2"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["distinct_correct"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["concepts"] == pytest.approx((1 + 0 + 2) / 3)
    assert m["concept_entropy"] == pytest.approx(math.log(2) / 3)
    assert m["top_concept_share"] == pytest.approx((1.0 + 0.5) / 2)  # the NaN row is ignored
    all_nan = mean_metrics([{"x": float("nan")}, {"x": float("nan")}])
    assert math.isnan(all_nan["x"])


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert lo_s < hi_s and lo_l < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # ~ 1/sqrt(100) as wide
    assert bootstrap_ci(small, level=0.5)[1] - bootstrap_ci(small, level=0.5)[0] < hi_s - lo_s


def test_bootstrap_ci_deterministic_and_degenerate():
    v = np.arange(10.0)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    assert bootstrap_ci([2.5]) == [2.5, 2.5]
    assert bootstrap_ci([4.0] * 7) == [4.0, 4.0]
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert all(math.isnan(x) for x in bootstrap_ci([float("nan")]))
    lo, hi = bootstrap_ci([0.0, 1.0, float("nan"), 1.0])  # NaNs dropped
    assert 0.0 <= lo <= 2 / 3 <= hi <= 1.0


def test_ci_tree_mirrors_structure():
    rows = [{"a": float(i), "b": {"c": float(i % 2)}} for i in range(30)]
    tree = ci_tree(rows)
    assert set(tree) == {"a", "b"} and set(tree["b"]) == {"c"}
    lo, hi = tree["a"]
    assert lo <= 14.5 <= hi
    lo, hi = tree["b"]["c"]
    assert lo <= 0.5 <= hi
