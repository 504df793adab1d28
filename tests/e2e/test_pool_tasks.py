"""`mitigate table --pool-tasks`: two smoke comparisons on task seeds 0 and 1 pooled with the third
bootstrap level; the pooled estimate is the mean of the per-task ones, and bad input is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mitigate import cli

SMALL = ["--set", "reproduce.methods=[base, grpo, sdsd]", "--set", "reproduce.seeds=[0, 1]",
         "--set", "reproduce.sharpening=[0.7]"]
PRIMARY = """
reproduce:
  strata: {hard: {low: 0.0, high: 0.9, samples: 16}}
  primary:
    - {name: ni, method: sdsd, reference: grpo, split: id, metric: pass_at_k/1, direction: greater, margin: -0.03}
    - {name: rare, method: sdsd, reference: grpo, split: rare_only, metric: pass_at_k/max, direction: less}
    - {name: slope, method: sdsd, reference: grpo, split: id, metric: ratio_slope, direction: greater}
    - {name: hard, method: sdsd, reference: grpo, split: hard, metric: pass_at_k/max, direction: less}
"""


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    (root / "primary.yaml").write_text(PRIMARY)
    for t in (0, 1):
        assert cli.main(["reproduce", "--preset", "smoke", "--out", str(root / f"task{t}"), "--quiet", "--jobs", "1",
                         "--config", str(root / "primary.yaml"), *SMALL, "--set", f"task.seed={t}"]) == 0
    return root


def test_pooled_estimate_is_the_mean_over_task_seeds(two_tasks):
    assert cli.main(["table", "--pool-tasks", str(two_tasks / "task0"), str(two_tasks / "task1"),
                     "--out", str(two_tasks / "pooled"), "--quiet"]) == 0
    pooled = json.loads((two_tasks / "pooled" / "summary.json").read_text())
    parts = [json.loads((two_tasks / f"task{t}" / "summary.json").read_text()) for t in (0, 1)]
    assert pooled["pooled_task_seeds"] == [0, 1]
    for m in ("base", "grpo", "sdsd", "base@t0.7"):
        want = np.mean([p["methods"][m]["id"]["pass_at_k"]["1"] for p in parts])
        assert pooled["methods"][m]["id"]["pass_at_k"]["1"] == pytest.approx(want, abs=1e-12)
        assert [t["task_seed"] for t in pooled["methods"][m]["per_task"]] == [0, 1]
        lo, hi = pooled["methods"][m]["ci95"]["id"]["pass_at_k"]["1"]
        assert lo <= pooled["methods"][m]["id"]["pass_at_k"]["1"] <= hi
    d = pooled["methods"]["sdsd"]["paired"]["grpo"]["id"]["pass_at_k"]["1"]
    assert d["mean"] == pytest.approx(pooled["methods"]["sdsd"]["id"]["pass_at_k"]["1"]
                                      - pooled["methods"]["grpo"]["id"]["pass_at_k"]["1"])
    assert set(pooled["ratio_test"]["methods"]) >= {"base", "grpo", "sdsd"}
    assert [t["name"] for t in pooled["primary"]["tests"]] == ["ni", "rare", "slope", "hard"]
    assert [t["name"] for t in parts[0]["primary"]["tests"]] == ["ni", "rare", "slope", "hard"]
    # the stratum: each task's own hard prompts, pooled as the mean of the per-task estimates
    want = np.mean([p["methods"]["sdsd"]["strata"]["hard"]["pass_at_k"]["1"] for p in parts])
    assert pooled["methods"]["sdsd"]["strata"]["hard"]["pass_at_k"]["1"] == pytest.approx(want, abs=1e-12)
    assert all(p["strata"]["hard"]["n_prompts"] == len(p["strata"]["hard"]["prompts"]) > 0 for p in parts)
    assert all(0 < t["p_value"] <= t["p_holm"] <= 1 for t in pooled["primary"]["tests"])
    md = (two_tasks / "pooled" / "summary.md").read_text()
    assert "## Per task seed" in md and "## Primary endpoints" in md


def test_a_primary_endpoint_naming_an_absent_method_is_refused_before_any_work(tmp_path, capsys):
    endpoint = "reference: grpo, split: id, metric: ratio_slope"
    (tmp_path / "p.yaml").write_text(PRIMARY.replace(f"method: sdsd, {endpoint}", f"method: sdsd_cmi, {endpoint}"))
    assert cli.main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "x"), "--quiet", "--config",
                     str(tmp_path / "p.yaml"), *SMALL]) == 2
    assert "sdsd_cmi' is not a compared method; allowed: base, grpo, sdsd, base@t0.7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_pooling_keeps_the_methods_every_folder_compared(two_tasks, tmp_path):
    """A folder that compared one more method (task seed 2 with sdsd_cmi too): the pool keeps the
    methods both have; a folder with other settings than the methods and task seed is refused."""
    assert cli.main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "task2"), "--quiet", "--jobs", "1",
                     "--config", str(two_tasks / "primary.yaml"), *SMALL, "--set", "task.seed=2",
                     "--set", "reproduce.methods=[base, grpo, sdsd, sdsd_cmi]"]) == 0
    assert cli.main(["table", "--pool-tasks", str(two_tasks / "task0"), str(tmp_path / "task2"),
                     "--out", str(tmp_path / "pooled"), "--quiet"]) == 0
    pooled = json.loads((tmp_path / "pooled" / "summary.json").read_text())
    assert pooled["pooled_methods"] == ["base", "grpo", "sdsd", "base@t0.7"] == list(pooled["methods"])


def test_pooling_refuses_folders_that_differ_beyond_the_task_seed(two_tasks, capsys):
    out = two_tasks / "same"
    assert cli.main(["table", "--pool-tasks", str(two_tasks / "task0"), str(two_tasks / "task0"),
                     "--out", str(out), "--quiet"]) == 2
    assert "task seeds [0, 0]" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["table", "--pool-tasks", str(two_tasks / "task0"), "--out", str(out), "--quiet"]) == 2
    assert "at least two" in capsys.readouterr().err
