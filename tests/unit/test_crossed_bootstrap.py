"""The crossed bootstrap against a brute-force enumeration, the reason it exists (shared prompt
effects), paired differences, and the ranking rules (saturation, ties, rank intervals)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mitigate.metrics import crossed_bootstrap, percentile_interval, point_estimate
from mitigate.metrics.ranking import rank_methods, saturated_columns
from mitigate.metrics.summary import summarize


def brute_force_distribution(tables: dict[str, np.ndarray]):
    """Every replicate of the crossed bootstrap with its probability: one prompt resample (an
    ordered P-tuple of prompt indices) shared by all methods, one seed resample per method."""
    P = next(iter(tables.values())).shape[1]
    names = list(tables)
    seed_tuples = [list(itertools.product(range(tables[n].shape[0]), repeat=tables[n].shape[0])) for n in names]
    values, weights = {n: [] for n in names}, []
    for prompts in itertools.product(range(P), repeat=P):
        for seeds in itertools.product(*seed_tuples):
            w = 1.0 / P**P
            for n, s in zip(names, seeds):
                w /= len(seed_tuples[names.index(n)])
                values[n].append(np.nanmean(tables[n][np.array(s)][:, np.array(prompts)].mean(1), 0))
            weights.append(w)
    return {n: np.array(v) for n, v in values.items()}, np.array(weights)


def test_crossed_bootstrap_matches_brute_force():
    rng = np.random.default_rng(0)
    prompt_effect = 3.0 * rng.normal(size=(1, 3, 1))  # shared by seeds and methods
    tables = {"a": prompt_effect + 0.3 * rng.normal(size=(2, 3, 2)),
              "b": prompt_effect + 0.5 + 0.3 * rng.normal(size=(2, 3, 2))}
    exact, w = brute_force_distribution(tables)
    reps = crossed_bootstrap(tables, n_boot=40_000, seed=1)
    for n in tables:
        mean = w @ exact[n]
        var = w @ (exact[n] - mean) ** 2
        np.testing.assert_allclose(reps[n].mean(0), mean, atol=4 * np.sqrt(var.max() / 40_000))
        np.testing.assert_allclose(reps[n].var(0), var, rtol=0.05)
        np.testing.assert_allclose(point_estimate(tables[n]), tables[n].mean((0, 1)))
    # the paired difference: its exact variance and the replicates' agree, and pairing removes the
    # shared prompt effect (much narrower than the two methods' own spreads)
    d_exact = exact["b"] - exact["a"]
    d_var = w @ (d_exact - w @ d_exact) ** 2
    np.testing.assert_allclose((reps["b"] - reps["a"]).var(0), d_var, rtol=0.05)
    assert (d_var < 0.5 * (w @ (exact["a"] - w @ exact["a"]) ** 2)).all()


def test_shared_prompt_effects_widen_the_interval():
    """With a per-prompt effect shared by every seed, resampling prompts independently per seed
    (the old two-level bootstrap) understates the interval; the crossed one does not."""
    rng = np.random.default_rng(1)
    S, P = 3, 64
    table = rng.normal(size=(1, P, 1)) + 0.2 * rng.normal(size=(S, P, 1))
    crossed = np.diff(percentile_interval(crossed_bootstrap({"m": table}, 4000, 0)["m"]))[0, 0]
    independent = []
    for _ in range(4000):
        seeds = rng.integers(S, size=S)
        independent.append(np.mean([table[s, rng.integers(P, size=P)].mean() for s in seeds]))
    naive = np.diff(np.quantile(independent, [0.025, 0.975]))[0]
    assert crossed > 1.3 * naive


def test_nan_entries_are_left_out():
    table = np.array([[[1.0], [np.nan], [0.0]], [[np.nan], [np.nan], [1.0]]])  # [S=2, P=3, K=1]
    assert point_estimate(table)[0] == pytest.approx(np.mean([0.5, 1.0]))
    reps = crossed_bootstrap({"m": table}, 500, 0)["m"]
    assert np.isfinite(reps).any()


def rows(values_by_seed):
    return {s: {"id": [{"pass_at_k": {"1": v, "8": min(1.0, 2 * v)}, "concepts": 1.0 + v,
                        "label_counts": {"0": 3, "1": 1}} for v in vals]}
            for s, vals in values_by_seed.items()}


def test_summarize_paired_and_ranking_rules():
    rng = np.random.default_rng(2)
    base_vals = rng.uniform(0.2, 0.6, size=16)
    runs = {"base": rows({0: base_vals}),
            "grpo": rows({0: base_vals + 0.21, 1: base_vals + 0.22}),
            "sdsd": rows({0: base_vals + 0.2, 1: base_vals + 0.2})}
    methods, reps = summarize(runs, n_boot=500)
    d = methods["grpo"]["paired"]["sdsd"]["id"]["pass_at_k"]["1"]
    assert d["mean"] == pytest.approx(0.015) and d["ci95"][0] > 0  # a tiny but consistent difference
    assert methods["base"]["paired"]["grpo"]["id"]["pass_at_k"]["1"]["ci95"][1] < 0
    assert methods["base"]["label_shares"]["id"] == {"0": 0.75, "1": 0.25}
    summary = {"methods": methods}
    assert saturated_columns(summary) == []
    ranking = rank_methods(summary, reps)
    assert list(ranking)[-1] == "base"
    for name, r in ranking.items():
        lo, hi = r["mean rank ci95"]
        assert lo <= r["mean rank"] + 1e-9 and r["mean rank"] - 1e-9 <= hi or name
    # ties at the printed precision share a rank
    summary["methods"]["sdsd"]["id"]["pass_at_k"]["8"] = summary["methods"]["grpo"]["id"]["pass_at_k"]["8"] + 1e-5
    tied = rank_methods(summary)
    assert tied["grpo"]["ID pass@8"] == tied["sdsd"]["ID pass@8"]
    # a column saturated for every method is not ranked
    for m in summary["methods"].values():
        m["ci95"]["id"]["pass_at_k"]["8"] = [0.995, 1.0]
    assert saturated_columns(summary) == ["ID pass@8"]
    assert "ID pass@8" not in rank_methods(summary)["grpo"]
    assert not math.isnan(rank_methods(summary)["grpo"]["mean rank"])
