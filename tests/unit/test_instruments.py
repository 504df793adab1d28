"""Issue 23's instruments against exact answers: the ratio test on tabular policies, the
accuracy-free count against enumeration of r-subsets, Holm against a hand-worked example, the
three-level (task, prompt, seed) bootstrap against brute force, and the primary-endpoint block."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mitigate.metrics import distinct_among
from mitigate.metrics.primary import check_endpoints, primary_block
from mitigate.metrics.ratio import RATIO_KEYS, partial_slopes, pcmi_bar, ratio_stats, slope
from mitigate.metrics.statistics import bootstrap_p, crossed_bootstrap, holm, pool_task_replicates

# ----------------------------------------------------------------------------- the ratio test

def tabular_prompt(rng, P=6):
    """A base distribution over P correct outputs (plus incorrect mass) and a teacher table
    log p0(y_i | x, y*_k) that copies the demonstration: the pieces of pcmi_bar."""
    base = np.log(rng.dirichlet(np.ones(P)) * 0.7)  # 30% of the mass on incorrect outputs
    copy = rng.uniform(0.5, 3.0, size=(P, P)) + 4.0 * np.eye(P)  # likes the demonstrated output
    teacher = np.log(np.exp(base)[None, :] * np.exp(copy))
    teacher -= np.log(np.exp(teacher).sum(1, keepdims=True) / 0.8)  # each row a distribution (with 20% incorrect)
    return base, teacher


def pooled_slope(prompts, tilt):
    """The ratio test's slope over several prompts of a model made by `tilt(base, pcmi)`."""
    sxy = sxx = 0.0
    for base, teacher in prompts:
        b = pcmi_bar(base, teacher)
        s = ratio_stats(base, tilt(base, b), b)
        sxy, sxx = sxy + s["ratio_sxy"], sxx + s["ratio_sxx"]
    return float(slope(sxy, sxx))


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_slope_recovers_an_exact_tilt_by_c_times_pcmi(c):
    rng = np.random.default_rng(0)
    prompts = [tabular_prompt(rng, P) for P in (2, 3, 6, 9)]
    # the model: p(y) ∝ p0(y) exp(c pcmi_bar(y)) among correct outputs, any mass outside C
    got = pooled_slope(prompts, lambda base, b: base + c * b + np.log(0.55) - np.log(np.exp(base + c * b).sum()))
    assert got == pytest.approx(c, abs=1e-10)


def pooled_partial(prompts, tilt):
    sums = dict.fromkeys(RATIO_KEYS, 0.0)
    for base, teacher in prompts:
        b = pcmi_bar(base, teacher)
        for k, v in ratio_stats(base, tilt(base, b), b).items():
            sums[k] += v
    return partial_slopes(*[sums[k] for k in ("ratio_sxy", "ratio_sxx", "ratio_sey", "ratio_see", "ratio_sxe")])


@pytest.mark.parametrize("c, s", [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.5, -0.3), (1.0, 2.0)])
def test_partial_slope_separates_the_tilt_from_sharpening(c, s):
    """A model tilted by c * pcmi_bar and sharpened by s * log p0: the partial slope is c whatever s,
    the sharpening coefficient is s; the plain slope mixes the two (unless s = 0)."""
    rng = np.random.default_rng(3)
    prompts = [tabular_prompt(rng, P) for P in (3, 4, 6, 9)]
    tilt = lambda base, b: base + c * b + s * base  # noqa: E731
    got_c, got_s = pooled_partial(prompts, tilt)
    assert got_c == pytest.approx(c, abs=1e-9) and got_s == pytest.approx(s, abs=1e-9)
    if s == 0:
        assert pooled_slope(prompts, tilt) == pytest.approx(c, abs=1e-9)
    else:
        assert abs(pooled_slope(prompts, tilt) - c) > 1e-3


def test_slope_is_zero_for_a_uniform_rescaling_of_the_correct_set():
    rng = np.random.default_rng(1)
    prompts = [tabular_prompt(rng, P) for P in (2, 5, 7)]
    assert pooled_slope(prompts, lambda base, b: base + np.log(1.3)) == pytest.approx(0.0, abs=1e-12)
    base, teacher = prompts[1]
    assert ratio_stats(base, base + 0.2, pcmi_bar(base, teacher))["kl_correct"] == pytest.approx(0.0, abs=1e-12)


def test_pcmi_bar_weights_demonstrations_by_the_base_among_correct_outputs():
    base = np.log(np.array([0.6, 0.2]))  # 0.2 of the mass is incorrect
    teacher = np.log(np.array([[0.9, 0.05], [0.3, 0.6]]))
    w = np.array([0.75, 0.25])
    expected = w @ (teacher - base[None, :])
    assert pcmi_bar(base, teacher) == pytest.approx(expected)
    # by hand for output 0: 0.75 log(0.9/0.6) + 0.25 log(0.3/0.6)
    assert pcmi_bar(base, teacher)[0] == pytest.approx(0.75 * np.log(1.5) + 0.25 * np.log(0.5))


def test_kl_among_correct_outputs_by_hand_and_nan_below_two_outputs():
    base, model = np.log([0.5, 0.25]), np.log([0.3, 0.6])
    p0, pi = np.array([2 / 3, 1 / 3]), np.array([1 / 3, 2 / 3])
    assert ratio_stats(base, model, [0.0, 1.0])["kl_correct"] == pytest.approx(np.sum(pi * np.log(pi / p0)))
    assert all(np.isnan(v) for v in ratio_stats([-1.0], [-2.0], [0.3]).values())


def test_pairwise_sums_equal_the_all_pairs_definition():
    rng = np.random.default_rng(2)
    a, b, base = rng.normal(size=5), rng.normal(size=5), rng.normal(size=5)
    s = ratio_stats(base, base + a, b)
    pairs = list(itertools.combinations(range(5), 2))
    assert s["ratio_sxy"] == pytest.approx(sum((a[i] - a[j]) * (b[i] - b[j]) for i, j in pairs))
    assert s["ratio_sxx"] == pytest.approx(sum((b[i] - b[j]) ** 2 for i, j in pairs))


# ----------------------------------------------------------------------------- accuracy-free diversity

@pytest.mark.parametrize("labels", [[0, 0, 1], [0, 1, 2, 3], [5, 5, 5, 5, 2, 2, 9], list("aabbbcdddd")])
def test_distinct_among_equals_enumeration_of_r_subsets(labels):
    for r in range(1, len(labels) + 1):
        subsets = list(itertools.combinations(range(len(labels)), r))
        brute = np.mean([len({labels[i] for i in s}) for s in subsets])
        assert distinct_among(labels, r) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(distinct_among(labels, len(labels) + 1))


def test_distinct_among_does_not_grow_with_the_number_of_correct_samples():
    """A random r-subset of c i.i.d. correct samples is r i.i.d. samples: averaged over the draws of
    c samples, the count among r is the same for every c (exactly), while the count among all c
    correct samples grows with c (what made a more accurate method look more diverse)."""
    q = np.array([0.7, 0.2, 0.1])
    r = 2
    exact_r = np.sum(1 - (1 - q) ** r)
    plain = []
    for c in (2, 3, 5):
        seqs = list(itertools.product(range(3), repeat=c))
        probs = np.array([np.prod(q[list(s)]) for s in seqs])
        assert np.dot(probs, [distinct_among(list(s), r) for s in seqs]) == pytest.approx(exact_r, abs=1e-12)
        plain.append(np.dot(probs, [len(set(s)) for s in seqs]))
    assert plain[0] < plain[1] < plain[2]
    with pytest.raises(ValueError, match="r >= 1"):
        distinct_among([0, 1], 0)


# ----------------------------------------------------------------------------- Holm

def test_holm_against_a_hand_worked_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04 ->
    # 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(1*0.04, 0.06) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # step-down: rejected at 0.05 are exactly the first two sorted hypotheses
    assert list(holm([0.01, 0.04, 0.03, 0.005]) <= 0.05) == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        holm([0.2, 1.2])


def test_bootstrap_p_counts_the_wrong_side_of_the_margin():
    reps = np.array([-0.05, -0.04, -0.02, 0.01])
    assert bootstrap_p(reps, 0.0, "less") == pytest.approx(2 / 5)
    assert bootstrap_p(reps, -0.03, "greater") == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="direction"):
        bootstrap_p(reps, 0.0, "two_sided")


# ----------------------------------------------------------------------------- three-level bootstrap

def brute_force_pooled(tasks: list[np.ndarray]):
    """Exact mean and variance of the three-level bootstrap of one method: draw T task copies with
    replacement; each copy resamples its task's prompts and seeds independently; average."""
    per_task = []  # the exact distribution (values, probabilities) of one copy of each task
    for table in tasks:  # [S, P]
        S, P = table.shape
        vals = [table[np.array(s)][:, np.array(p)].mean() for p in itertools.product(range(P), repeat=P)
                for s in itertools.product(range(S), repeat=S)]
        per_task.append(np.array(vals))
    T = len(tasks)
    mean_copy = np.mean([v.mean() for v in per_task])
    # a copy = a random task then a random replicate of it: E and Var of one copy, copies i.i.d.
    second = np.mean([np.mean(v ** 2) for v in per_task])
    return mean_copy, (second - mean_copy ** 2) / T


def test_three_level_bootstrap_matches_brute_force_moments():
    tasks = [np.array([[0.0, 1.0], [0.5, 1.0]]), np.array([[0.2, 0.2], [0.9, 0.1]]),
             np.array([[1.0, 0.0], [1.0, 0.5]])]
    n_boot = 40000
    per_task = [crossed_bootstrap({"m": t[:, :, None]}, n_boot, seed=[7, i]) for i, t in enumerate(tasks)]
    pooled = pool_task_replicates(per_task, n_boot, seed=3)["m"][:, 0]
    mean, var = brute_force_pooled(tasks)
    assert pooled.mean() == pytest.approx(mean, abs=3e-3)
    assert pooled.var() == pytest.approx(var, rel=0.05)
    # sanity: pooling adds the between-task spread a single task's interval leaves out
    assert var > max(r["m"][:, 0].var() for r in per_task) / len(tasks)


def test_pooled_replicates_stay_paired_across_methods():
    rng = np.random.default_rng(0)
    per_task = []
    for _ in range(3):
        a = rng.normal(size=(500, 2))
        per_task.append({"a": a, "b": a + 1.0})  # b is a shifted by exactly 1 in every replicate
    pooled = pool_task_replicates(per_task, 300, seed=1)
    assert np.allclose(pooled["b"] - pooled["a"], 1.0)
    with pytest.raises(ValueError, match="same methods"):
        pool_task_replicates([{"a": per_task[0]["a"]}, {"b": per_task[1]["b"]}], 10)


# ----------------------------------------------------------------------------- primary endpoints

def stats_of(reps: dict[str, np.ndarray], keys):
    return {"keys": {"id": keys}, "replicates": {"id": reps},
            "estimates": {"id": {m: r.mean(0) for m, r in reps.items()}}}


def test_primary_block_holm_and_ratio_slope():
    rng = np.random.default_rng(0)
    keys = [("pass_at_k", "1"), ("pass_at_k", "64"), ("ratio_sxy",), ("ratio_sxx",), ("kl_correct",)]
    n = 4000
    grpo = np.column_stack([rng.normal(0.80, 0.01, n), rng.normal(0.95, 0.01, n), rng.normal(0.0, 0.05, n),
                            np.full(n, 2.0), rng.normal(0.1, 0.01, n)])
    sdsd = grpo + np.column_stack([rng.normal(-0.01, 0.005, n), rng.normal(-0.05, 0.01, n),
                                   rng.normal(1.0, 0.05, n), np.zeros(n), np.zeros(n)])
    endpoints = check_endpoints([
        {"name": "ni", "method": "sdsd", "reference": "grpo", "split": "id", "metric": "pass_at_k/1",
         "direction": "greater", "margin": -0.03},
        {"name": "kmax", "method": "sdsd", "reference": "grpo", "split": "id", "metric": "pass_at_k/max",
         "direction": "less"},
        {"name": "slope", "method": "sdsd", "reference": "grpo", "split": "id", "metric": "ratio_slope",
         "direction": "greater"},
        {"name": "wrong way", "method": "sdsd", "reference": "grpo", "split": "id", "metric": "pass_at_k/1",
         "direction": "greater"}], ["grpo", "sdsd"], ["id"])
    block = primary_block(endpoints, stats_of({"grpo": grpo, "sdsd": sdsd}, keys))
    by = {t["name"]: t for t in block["tests"]}
    assert by["slope"]["mean"] == pytest.approx(0.5, abs=0.01)  # sxy difference 1.0 over sxx 2.0
    assert by["ni"]["holds"] and by["kmax"]["holds"] and by["slope"]["holds"]
    assert not by["wrong way"]["holds"]  # sdsd is below grpo on pass@1: "greater than 0" fails
    assert by["kmax"]["p_holm"] == pytest.approx(4 * by["kmax"]["p_value"])  # all tied at the smallest p


def test_check_endpoints_names_the_problem_and_the_choices():
    good = {"name": "x", "method": "sdsd", "reference": "grpo", "split": "id", "metric": "pass_at_k/1",
            "direction": "less"}
    with pytest.raises(ValueError, match="allowed: grpo, sdsd"):
        check_endpoints([{**good, "method": "sdsdd"}], ["grpo", "sdsd"], ["id"])
    with pytest.raises(ValueError, match="allowed: less, greater"):
        check_endpoints([{**good, "direction": "lower"}], ["grpo", "sdsd"], ["id"])
    with pytest.raises(ValueError, match="unknown keys"):
        check_endpoints([{**good, "alpah": 1}], ["grpo", "sdsd"], ["id"])
    with pytest.raises(ValueError, match="allowed: id, rare_only"):
        check_endpoints([{**good, "split": "rare"}], ["grpo", "sdsd"], ["id", "rare_only"])
    assert check_endpoints([good], ["grpo", "sdsd"], ["id"])[0]["margin"] == 0.0


# ----------------------------------------------------------------------------- on a real policy

def test_ratio_reference_and_rows_on_the_smoke_task():
    """The base against itself: slope 0 and KL 0 exactly; a tempered copy of the base moves the
    ratios (KL > 0); sequence log-probs at T = 1 equal the policy's own."""
    import mitigate
    from mitigate.policies import build_policy
    from mitigate.recipes.evaluate import ratio_reference, ratio_rows, sequence_logprobs
    from mitigate.tasks import make_task

    cfg = mitigate.load_config(preset="smoke")
    task = make_task(cfg.task)
    torch.manual_seed(0)
    policy = build_policy(cfg.model, task)
    prompts = task.prompts(task.test_split)[:4]
    ref = ratio_reference(policy, task, prompts)
    assert [len(o) for o in ref["outputs"]] == [len(task.correct_completions(q)[0]) for q in prompts]
    ys = np.array(ref["outputs"][0])
    own = policy.sequence_logprobs([prompts[0].tokens] * len(ys), torch.as_tensor(ys),
                                   policy.completion_mask(torch.as_tensor(ys)))
    assert np.allclose(sequence_logprobs(policy, [prompts[0].tokens] * len(ys), ys), own.detach().numpy(), atol=1e-5)
    same = ratio_rows(policy, prompts, ref, cfg.eval)
    multi = [r for r, o in zip(same, ref["outputs"]) if len(o) >= 2]
    assert multi and all(r["ratio_sxy"] == pytest.approx(0.0, abs=1e-6) for r in multi)
    assert all(r["kl_correct"] == pytest.approx(0.0, abs=1e-6) for r in multi)
    cold = ratio_rows(policy, prompts, ref, mitigate.config.build(mitigate.config.EvalConfig,
                                                                  {"temperature": 0.5}))
    assert any(r["kl_correct"] > 1e-4 for r, o in zip(cold, ref["outputs"]) if len(o) >= 2)
    with pytest.raises(ValueError, match="other prompts"):
        ratio_rows(policy, prompts[:3], ref, cfg.eval)


def test_graph_correct_completions_are_exactly_what_the_verifier_accepts():
    """Every enumerated path verifies with its concept, and brute force over every node sequence
    s, a, b, c, g (and s, a, b, g) finds no accepted path outside the list, on ID and on
    closed-strategy prompts (where the closed concept's paths are left out)."""
    import mitigate
    from mitigate.tasks import make_task
    from mitigate.tasks.graph import EOS, SPECIALS

    cfg = mitigate.load_config(preset="smoke")
    task = make_task(cfg.task)
    nodes = np.arange(len(SPECIALS), task.vocab_size)
    for split in (task.test_split, task.ood_splits["closed_strategy"]):
        for q in task.prompts(split)[:4]:
            ys, labels = task.correct_completions(q)
            ok, got = task.verify([q] * len(ys), ys)
            assert ok.all() and (got == labels).all() and len({tuple(y) for y in ys.tolist()}) == len(ys)
            for inner in (2, 3):
                mids = np.array(np.meshgrid(*[nodes] * inner, indexing="ij")).reshape(inner, -1).T
                n = len(mids)
                rows = np.column_stack([np.full(n, q.start), mids, np.full(n, q.goal), np.full(n, EOS),
                                        np.zeros((n, 6 - inner), dtype=np.int64)])
                accepted = rows[task.verify([q] * n, rows)[0]][:, :inner + 3]
                listed = {tuple(y) for y in ys.tolist()}
                assert {tuple(r) for r in accepted.tolist()} <= listed
                if inner == 3:
                    assert len(accepted) == len(ys)


def test_strata_are_checked_and_subset_the_id_rows():
    from mitigate.core.fields import ConfigError
    from mitigate.recipes.reproduce import check_strata, with_strata

    assert check_strata({"hard": {"high": 0.2}})["hard"] == {"low": 0.0, "high": 0.2, "samples": 512, "seed": 1000}
    for bad, msg in (({"hard": {"hihg": 0.2}}, "keys among low, high, samples, seed"),
                     ({"hard": {"low": 0.3, "high": 0.2}}, "low < high"),
                     ({"id": {"high": 0.2}}, "cannot name a stratum"),
                     ({"hard": {"samples": 0}}, "samples must be an integer >= 1")):
        with pytest.raises(ConfigError, match=msg):
            check_strata(bad)
    rows = {"m": {0: {"id": [{"a": 0}, {"a": 1}, {"a": 2}], "ood_x": [{"a": 9}]}}}
    with_strata(rows, {"hard": [0, 2]})
    assert rows["m"][0]["hard"] == [{"a": 0}, {"a": 2}] and list(rows["m"][0]) == ["id", "ood_x", "hard"]
