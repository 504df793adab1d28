"""`mitigate reproduce` end to end on the smoke preset (summary.json schema of DESIGN.md section 4),
and (slow) the acceptance checks of the default-preset base model."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mitigate import cli
from mitigate.metrics import ks_up_to
from mitigate.report import read_summary

METHODS = ["base", "grpo", "sdsd", "sdsd_cmi", "sdsd_anticopy", "sdsd_marginal", "sdsd_entropy", "sdsd_ot",
           "sdsd_ot_replay", "sdsd_replay", "grpo_ot_replay"]
SEEDS = [0, 1]
ID_SCALARS = ("distinct_correct", "concepts", "concept_entropy", "token_entropy")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, smoke_cfg):
    """The smoke preset's own comparison: every method, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("reproduce")
    out = root / "out"
    rc = cli.main(["reproduce", "--preset", "smoke", "--out", str(out), "--quiet"])
    assert rc == 0
    assert os.listdir(root) == ["out"], "no temporary folder left behind"
    return out, read_summary(out)  # mitigate's reader: a null (not a finite number) comes back as NaN


def test_base_alone_with_a_worker_pool(tmp_path):
    """A comparison with nothing to train (`reproduce.methods=[base]`) and `--jobs 2`: no pool to
    start, the base's row and the smoke preset's sharpening control (the base at T = 0.7) only."""
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--preset", "smoke", "--out", str(out), "--quiet", "--jobs", "2",
                     "--set", "reproduce.methods=[base]", "--set", "reproduce.n_boot=100"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["base", "base@t0.7"]
    assert "ranking" not in summary  # a control is not ranked: one ranked method


def leaves(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def test_files(reproduced):
    out, s = reproduced
    for name in ("summary.json", "summary.md", "config.yaml"):
        assert (out / name).is_file(), name
    # figures are drawn by `python -m analysis figures` (tests/unit/test_analysis.py), not by reproduce
    assert not list(out.glob("*.png"))
    md = (out / "summary.md").read_text()
    assert "smoke" in md
    for m in METHODS:
        assert f"| {m} |" in md
    header = next(line for line in md.splitlines() if line.startswith("| method | seeds"))
    assert "closed_strategy pass@8" in header and "rare_only pass@8" in header  # the largest k evaluated (n = 8)
    assert "pass@64" not in header
    # the ranking names the k it ranked on, not the k a default run would use
    rank_header = next(line for line in md.splitlines() if line.startswith("| rank | method"))
    ranked_or_saturated = rank_header + " ".join(s["not_ranked_saturated"])
    assert "ID pass@8" in ranked_or_saturated and "closed_strategy pass@8" in ranked_or_saturated
    assert "pass@64" not in rank_header
    for col in s["not_ranked_saturated"]:  # a saturated column is named in the text, not ranked
        assert f"| {col} |" not in rank_header and col in md


def test_summary_schema(reproduced, smoke_cfg):
    _, s = reproduced
    bias = s["base_demo_bias"]
    for key in ("share_with_demo", "share_without_demo", "pass_at_1_with_demo", "pass_at_1_without_demo"):
        assert 0.0 <= bias[key] <= 1.0, (key, bias)
    assert s["preset"] == "smoke"
    assert isinstance(s["wall_seconds"], float) and s["wall_seconds"] > 0
    assert list(s["methods"]) == [*METHODS, "base@t0.7"]  # the sharpening control comes last
    ks = [str(k) for k in ks_up_to(smoke_cfg.eval.samples)]
    assert ks == ["1", "2", "4", "8"]
    for name, m in s["methods"].items():
        assert m["seeds"] == ([smoke_cfg.seed] if name.startswith("base") else SEEDS)
        assert list(m["id"]["pass_at_k"]) == ks
        for key in ID_SCALARS:
            assert isinstance(m["id"][key], float), (name, key)
        assert set(m["ood"]) == {"closed_strategy", "rare_only"}
        for split in ("closed_strategy", "rare_only"):
            assert list(m["ood"][split]["pass_at_k"]) == ks
        # ci95 has the same keys as the means
        assert set(m["ci95"]) == {"id", "ood"}
        for path, _ in leaves({"id": m["id"], "ood": m["ood"]}):
            ci = get(m["ci95"], path)
            assert isinstance(ci, list) and len(ci) == 2, (name, path)
        assert [p["seed"] for p in m["per_seed"]] == m["seeds"]
        for p in m["per_seed"]:
            assert list(p["id"]["pass_at_k"]) == ks
            assert set(p["ood"]) == {"closed_strategy", "rare_only"}


def test_values_and_intervals(reproduced):
    _, s = reproduced
    for name, m in s["methods"].items():
        for split_pk in (m["id"]["pass_at_k"], m["ood"]["closed_strategy"]["pass_at_k"],
                         m["ood"]["rare_only"]["pass_at_k"]):
            v = np.array(list(split_pk.values()))
            assert ((v >= 0) & (v <= 1)).all() and (np.diff(v) >= -1e-12).all(), (name, v)
        for path, mean in leaves({"id": m["id"], "ood": m["ood"]}):
            lo, hi = get(m["ci95"], path)
            if math.isnan(mean):
                continue
            assert lo - 1e-9 <= mean <= hi + 1e-9, (name, path, lo, mean, hi)
        # the top level is the mean over seeds
        for path, mean in leaves({"id": m["id"], "ood": m["ood"]}):
            per = [get(p, path) for p in m["per_seed"]]
            assert mean == pytest.approx(float(np.nanmean(per)), nan_ok=True), (name, path)
    assert 0 < s["methods"]["base"]["id"]["pass_at_k"]["1"] < 1


def test_trained_runs_kept(reproduced):
    out, s = reproduced
    for m in METHODS[1:]:
        for seed in SEEDS:
            assert (out / f"{m}-seed{seed}" / "checkpoint" / "model.safetensors").is_file()
    assert (out / "base" / "checkpoint" / "model.safetensors").is_file()
    assert s["budget"]["steps"] == 2 and set(s["budget"]["objectives"]) == set(METHODS[1:])


def test_sweep_on_shared_base_and_combined_table(reproduced, tmp_path):
    """An ablation-style run reuses the base (--base), reports ID on id_val, and `mitigate table`
    merges it with another summary; a repeated method name is refused with nothing written."""
    out, _ = reproduced
    val = tmp_path / "val"
    sweep = ["reproduce", "--preset", "smoke", "--base", str(out / "base"), "--quiet",
             "--set", "eval.id_split=id_val", "--set", "reproduce.methods=[sdsd_ent]",
             "--set", "reproduce.method_configs={sdsd_ent: {train.objective: {name: sdsd}, "
                      "train.regularizers: [{name: entropy, coef: 0.1}]}}"]
    assert cli.main([*sweep, "--out", str(val)]) == 0
    s = json.loads((val / "summary.json").read_text())
    assert s["id_split"] == "id_val" and not (val / "base").exists()
    assert s["budget"]["regularizers"]["sdsd_ent"][0]["coef"] == 0.1
    val2 = tmp_path / "val2"
    assert cli.main([*sweep, "--set", "reproduce.method_configs={sdsd_ent2: {train.objective: {name: sdsd}}}",
                     "--set", "reproduce.methods=[sdsd_ent2]", "--out", str(val2)]) == 0
    table = tmp_path / "table"
    assert cli.main(["table", str(val), str(val2), "--out", str(table)]) == 0
    merged = json.loads((table / "summary.json").read_text())
    assert list(merged["methods"]) == ["sdsd_ent", "sdsd_ent2"]  # base not listed: not evaluated
    assert set(merged["ranking"]) == set(merged["methods"])
    assert "id_val" in (table / "summary.md").read_text()
    assert cli.main(["table", str(val), str(val), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert cli.main(["table", str(val), str(out), "--out", str(tmp_path / "bad")]) == 2  # id_val vs id_test


# ----------------------------------------------------------------------------- slow: default preset

@pytest.mark.slow
def test_default_base_meets_acceptance(tmp_path):
    """Issue 2: the default base model is a good starting point for the collapse experiment."""
    import torch

    from mitigate import config as C
    from mitigate.policies import load_policy
    from mitigate.recipes.evaluate import demonstration_bias, evaluate, split_prompts
    from mitigate.recipes.pretrain import pretrain
    from mitigate.tasks import make_task

    cfg = C.load(preset="default")
    run = pretrain(cfg, tmp_path / "base", quiet=True)
    policy, _ = load_policy(run)
    task = make_task(cfg.task)
    with torch.no_grad():
        res = evaluate(policy, task, cfg.eval, seed=0, quiet=True)
        bias = demonstration_bias(policy, task, split_prompts(task, "id_test", cfg.eval.max_prompts), seed=0,
                                  batch_size=cfg.eval.batch_size, quiet=True)
    idm = res["id"]
    report = {"id": idm, "ood": res["ood"], "bias": bias}
    assert 0.25 <= idm["pass_at_k"]["1"] <= 0.75, report
    assert idm["pass_at_k"]["64"] >= 0.9, report
    assert idm["top_concept_share"] >= 0.45, report
    assert idm["concepts"] >= 2.5, report
    assert bias["lift"] >= 0.15, report
    # the self-teacher knows more than its student: the headroom SDSD distils from (0.81 vs 0.64)
    assert bias["pass_at_1_with_demo"] >= bias["pass_at_1_without_demo"] + 0.1, report
    for split in ("closed_strategy", "rare_only"):
        pk = res["ood"][split]["pass_at_k"]
        assert pk["64"] >= 0.5, (split, report)
        assert pk["1"] < idm["pass_at_k"]["1"], (split, report)


def test_paired_differences_budget_and_per_prompt_results(reproduced):
    """Every method carries paired differences against grpo and sdsd (same keys as its means, the
    mean equal to the difference of means), a budget per run, and each run folder an eval.json
    whose per-prompt rows reproduce the summary's per-seed means."""
    out, s = reproduced
    for name, m in s["methods"].items():
        assert set(m["paired"]) == {"grpo", "sdsd"} - {name}, name
        for ref, d in m["paired"].items():
            for path, mean in leaves({"id": m["id"], "ood": m["ood"]}):
                cell = get(d, path)
                other = get(s["methods"][ref], path)
                if math.isnan(mean) or math.isnan(other):
                    continue
                assert cell["mean"] == pytest.approx(mean - other, abs=1e-12), (name, ref, path)
                lo, hi = cell["ci95"]
                assert lo - 1e-9 <= cell["mean"] <= hi + 1e-9, (name, ref, path)
        assert set(m["budget"]) == {"rollouts", "verifier_calls", "reference_generations", "forward_tokens",
                                    "backward_tokens", "wall_seconds"}
    b = s["budget"]
    rollouts = b["steps"] * b["prompts_per_step"] * b["group_size"]
    for name in METHODS[1:]:
        assert s["methods"][name]["budget"]["rollouts"] == rollouts, name
        assert s["methods"][name]["budget"]["backward_tokens"] > 0
    assert s["methods"]["base"]["budget"]["rollouts"] == 0
    # replay draws reference paths (extra generations, extra verifier calls); plain SDSD does not
    assert s["methods"]["sdsd_ot_replay"]["budget"]["reference_generations"] > 0
    assert s["methods"]["sdsd"]["budget"]["reference_generations"] == 0
    assert s["methods"]["sdsd_ot_replay"]["budget"]["verifier_calls"] > s["methods"]["sdsd"]["budget"]["verifier_calls"]
    record = json.loads((out / "sdsd-seed1" / "eval.json").read_text())
    per_seed = next(p for p in s["methods"]["sdsd"]["per_seed"] if p["seed"] == 1)
    rows = record["per_prompt"]["id"]
    assert per_seed["id"]["pass_at_k"]["1"] == pytest.approx(np.mean([r["pass_at_k"]["1"] for r in rows]))
    assert set(record["per_prompt"]["ood"]) == {"closed_strategy", "rare_only"}


def test_tradeoff_curves(reproduced):
    """GRPO and SDSD at weaker updates (weights interpolated with the base) form curves from the
    base to the trained method; every other method has a gap above each curve with an interval."""
    _, s = reproduced
    curves = s["tradeoff"]["curves"]
    assert set(curves) == {"grpo", "sdsd"}
    for name, points in curves.items():
        assert [p["alpha"] for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
        assert points[0]["id"] == s["methods"]["base"]["id"] and points[-1]["id"] == s["methods"][name]["id"]
    gaps = s["tradeoff"]["gaps_above"]
    assert set(gaps["sdsd_cmi"]) == {"grpo", "sdsd"} and set(gaps["grpo"]) == {"sdsd"}
    for by_metric in gaps["sdsd_cmi"].values():
        assert "id concepts" in by_metric
        for g in by_metric.values():
            assert 0.0 <= g["outside_share"] <= 1.0 and len(g["ci95"]) == 2
