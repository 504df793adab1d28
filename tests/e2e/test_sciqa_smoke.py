"""`mitigate reproduce --preset sciqa-smoke` end to end through the CLI: a tiny random Qwen3
checkpoint named `tiny:qwen3`, the bundled questions, a short warm-up, two training steps per
method and seed; then the usual summary.json / summary.md with pass@k, accuracy (pass@1) and the
diversity of correct answers as text per split, paired intervals, and run folders whose
checkpoints can be evaluated again after the run (no temporary path in any record)."""

from __future__ import annotations

import json
import math
import os

import pytest

from mitigate import cli
from mitigate import config as C
from mitigate.metrics import ks_up_to
from mitigate.policies import load_policy
from mitigate.policies.hf import HFPolicy
from mitigate.tasks import make_task

METHODS = ["base", "grpo", "sdsd", "sdsd_marginal", "sdsd_ot"]
LEXICAL = ("lexical_cosine_distance", "lexical_vendi", "lexical_clusters")


@pytest.fixture(scope="module")
def cfg():
    return C.load(preset="sciqa-smoke")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("sciqa")
    out = root / "out"
    assert cli.main(["reproduce", "--preset", "sciqa-smoke", "--out", str(out), "--quiet"]) == 0
    assert os.listdir(root) == ["out"], "no temporary folder left behind"
    return out, json.loads((out / "summary.json").read_text())


def blocks(method: dict):
    """(split key, metrics, intervals) of the ID block and every OOD block."""
    yield "id", method["id"], method["ci95"]["id"]
    for split, block in method["ood"].items():
        yield split, block, method["ci95"]["ood"][split]


def test_summary_has_every_method_split_and_metric(reproduced, cfg):
    out, s = reproduced
    assert s["preset"] == "sciqa-smoke" and list(s["methods"]) == METHODS == cfg.reproduce.methods
    task = make_task(cfg.task)
    assert set(task.ood_splits) == {"subject_astronomy", "source"}
    ks = [str(k) for k in ks_up_to(cfg.eval.samples)]
    for name, m in s["methods"].items():
        assert m["seeds"] == ([0] if name == "base" else [0, 1])
        assert set(m["ood"]) == set(task.ood_splits)
        for split, block, ci in blocks(m):
            assert list(block["pass_at_k"]) == ks, (name, split)
            values = [block["pass_at_k"][k] for k in ks]
            assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)  # pass@1 is the accuracy
            for key in LEXICAL:
                assert math.isfinite(block[key]) and block[key] >= 0.0, (name, split, key)
                assert len(ci[key]) == 2
        if name != "base":
            assert m["budget"]["rollouts"] == cfg.train.steps * cfg.train.prompts_per_step * cfg.train.group_size
    # the warm-up makes some samples correct, so diversity is measured on real answers somewhere
    assert any(block["lexical_vendi"] > 0 for m in s["methods"].values() for _, block, _ in blocks(m))
    assert s["methods"]["base"]["id"]["pass_at_k"][ks[-1]] > 0


def test_paired_intervals_and_tables(reproduced):
    out, s = reproduced
    for name, m in s["methods"].items():
        against = [r for r in ("grpo", "sdsd") if r != name]
        assert sorted(m["paired"]) == sorted(against)
        for ref in against:
            for key in ("lexical_vendi", "lexical_clusters"):
                d = m["paired"][ref]["id"][key]
                assert set(d) == {"mean", "ci95"} and d["ci95"][0] <= d["ci95"][1]
            assert set(m["paired"][ref]["ood"]) == {"subject_astronomy", "source"}
    assert "tradeoff" in s and "ranking" in s and s["base_demo_bias"]["samples"] == 8
    md = (out / "summary.md").read_text()
    assert "sciqa-smoke" in md and "lexical Vendi" in md and "subject_astronomy pass@8" in md
    for m in METHODS:
        assert f"| {m} |" in md


def test_run_folders_hold_hf_checkpoints_that_evaluate_again(reproduced, tmp_path):
    out, _ = reproduced
    config = (out / "config.yaml").read_text()
    assert "tiny:qwen3" in config and "bundled:questions.jsonl" in config and ".tmp-" not in config
    policy, meta = load_policy(out / "sdsd-seed0")
    assert isinstance(policy, HFPolicy) and meta["method"] == "sdsd"
    assert (out / "sdsd-seed0" / "checkpoint" / "tokenizer.json").is_file()
    record = json.loads((out / "sdsd-seed0" / "eval.json").read_text())
    assert all(key in row for row in record["per_prompt"]["id"] for key in LEXICAL)
    res = tmp_path / "again.json"
    assert cli.main(["eval", "--ckpt", str(out / "sdsd-seed0"), "--out", str(res), "--samples", "2",
                     "--quiet"]) == 0
    again = json.loads(res.read_text())
    assert set(again["ood"]) == {"subject_astronomy", "source"} and "lexical_vendi" in again["id"]
