"""The Python API for ablation scripts: `import mitigate`, configs that validate themselves,
recipes that run quietly and return results."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mitigate
from mitigate import config as C


def test_version_and_exports():
    assert mitigate.__version__ == "0.1.0"
    for name in ("Config", "TrainConfig", "load_config", "pretrain", "train", "evaluate", "reproduce",
                 "register_objective", "register_regularizer", "register_task", "register_policy"):
        assert callable(getattr(mitigate, name)), name
    with pytest.raises(AttributeError):
        mitigate.does_not_exist  # noqa: B018


def test_cli_version_does_not_import_torch():
    code = "import sys; from mitigate import cli; sys.argv = ['mitigate', '--version']\n" \
           "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["mitigate 0.1.0", "False"]


def test_configs_validate_on_construction_and_assignment():
    cfg = mitigate.load_config(preset="smoke")
    with pytest.raises(mitigate.ConfigError, match="'train.lr' must be >= 0"):
        cfg.train.lr = -1
    assert cfg.train.lr == 3e-5  # the bad value was not kept
    with pytest.raises(mitigate.ConfigError, match="did you mean 'lr'"):
        cfg.train.lrr = 1.0
    with pytest.raises(mitigate.ConfigError, match="must be >= 1"):
        mitigate.TrainConfig(steps=0)
    with pytest.raises(mitigate.ConfigError, match="task.n_rare"):
        cfg.task.n_rare = 99  # the section's own cross-field check runs on assignment too
    assert cfg.task.n_rare == 3
    cfg.train.regularizers = [{"name": "entropy", "coef": 0.2}]  # a dict resolves through the registry
    assert cfg.train.regularizers[0].coef == 0.2 and type(cfg.train.regularizers[0]).__name__ == "EntropyConfig"
    with pytest.raises(mitigate.ConfigError, match="unknown regularizer 'entropi'.*did you mean 'entropy'"):
        cfg.train.regularizers = [{"name": "entropi"}]
    cfg.train.objective = {"name": "sdsd", "teacher": "ema"}
    assert cfg.train.objective.teacher == "ema"
    with pytest.raises(mitigate.ConfigError, match="bad value 'teachr'"):
        cfg.train.objective.teacher = "teachr"


def test_one_merge_rule():
    base = {"train": {"lr": 1.0, "objective": {"name": "sdsd", "teacher": "ema"}, "regularizers": [{"name": "a"}]}}
    assert C.merge(base, {"train": {"lr": 2.0}})["train"]["objective"]["teacher"] == "ema"
    renamed = C.merge(base, {"train": {"objective": {"name": "grpo"}}})["train"]["objective"]
    assert renamed == {"name": "grpo"}  # another entry's fields do not leak in
    same = C.merge(base, {"train": {"objective": {"name": "sdsd", "divergence": "jsd"}}})["train"]["objective"]
    assert same == {"name": "sdsd", "teacher": "ema", "divergence": "jsd"}
    assert C.merge(base, {"train": {"regularizers": []}})["train"]["regularizers"] == []  # lists replace
    assert C.nest({"train.objective": {"name": "x"}, "seed": 1}) == {"train": {"objective": {"name": "x"}}, "seed": 1}


def test_recipes_run_quietly_and_evaluate_returns_results(tmp_path, smoke_base, capfd):
    cfg = mitigate.load_config(preset="smoke", overrides=["train.steps=1"])
    run = mitigate.train(cfg, smoke_base, tmp_path / "run", quiet=True)
    res = mitigate.evaluate(run, quiet=True)
    assert set(res) >= {"id", "ood", "ci95"} and 0 <= res["id"]["pass_at_k"]["1"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # evaluate wrote nothing
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    mitigate.evaluate(run, out=tmp_path / "eval.json", quiet=True)
    assert (tmp_path / "eval.json").is_file()
