"""`--report-to`: metrics rows also go to accelerate's trackers; metrics.jsonl stays the record."""

from __future__ import annotations

import json

import pytest

from mitigate.core.fields import ConfigError
from mitigate.core.tracking import TRACKERS, Trackers, flat_config, parse_report_to


def test_report_to_names_are_checked():
    assert parse_report_to("none") == [] and parse_report_to(None) == []
    assert parse_report_to("tensorboard") == ["tensorboard"]
    assert "tensorboard" in parse_report_to("all")
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'.*allowed: none, all"):
        parse_report_to("tensorbord")
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        parse_report_to("none,tensorboard")
    assert "wandb" in TRACKERS and "mlflow" in TRACKERS


def test_an_uninstalled_tracker_names_the_package(monkeypatch):
    import mitigate.core.tracking as T

    monkeypatch.setattr(T, "get_available_trackers", lambda: ["tensorboard"])
    with pytest.raises(ConfigError, match="--report-to wandb: its package is not installed .*pip install wandb"):
        parse_report_to("wandb")


def test_flat_config_keeps_scalars():
    assert flat_config({"train": {"lr": 3e-5, "objective": {"name": "sdsd"}}, "seed": 0, "x": [1, 2]}) == \
        {"train.lr": 3e-5, "train.objective.name": "sdsd", "seed": 0, "x": "[1, 2]"}


def scalars_in(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_receives_the_rows(tmp_path):
    with Trackers("tensorboard", tmp_path, "run", {"seed": 3}) as trackers:
        trackers.log({"step": 1, "loss": 2.5, "skipped": True, "nonfinite": {"x": 1.0}})
        trackers.log({"step": 2, "loss": 1.5})
    got = scalars_in(tmp_path / "trackers" / "run")
    assert [v for _, v in got["loss"]] == [2.5, 1.5] and [s for s, _ in got["loss"]] == [1, 2]
    assert "skipped" not in got


def test_pretrain_reports_to_tensorboard_what_metrics_jsonl_holds(smoke_cfg, tmp_path):
    from mitigate import config as C
    from mitigate.recipes.pretrain import pretrain

    cfg = C.with_overrides(smoke_cfg, {"pretrain.steps": 4, "pretrain.log_every": 2})
    out = pretrain(cfg, tmp_path / "base", quiet=True, report_to="tensorboard")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got = scalars_in(out / "trackers" / "pretrain")
    assert [s for s, _ in got["loss"]] == [r["step"] for r in rows] == [2, 4]
    assert [v for _, v in got["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)  # float32 events
    assert not (tmp_path / "base.partial").exists()


def test_cli_refuses_an_unknown_tracker_before_any_work(tmp_path, capsys):
    from mitigate.cli import main

    assert main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "b"), "--report-to", "tensorbord"]) == 2
    assert "unknown tracker 'tensorbord'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_train_reports_every_metrics_row(smoke_cfg, smoke_base, tmp_path):
    from mitigate import config as C
    from mitigate.recipes.train import train

    cfg = C.with_overrides(smoke_cfg, {"train.steps": 2, "train.objective": {"name": "sdsd"}})
    out = train(cfg, smoke_base, tmp_path / "sdsd", quiet=True, report_to="tensorboard")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    got = scalars_in(out / "trackers" / "sdsd")
    assert [s for s, _ in got["reward"]] == [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert [v for _, v in got["kl_base"]] == pytest.approx([r["kl_base"] for r in rows if "kl_base" in r], rel=1e-6)
    assert [s for s, _ in got["probe_pass_at_1"]] == [r["step"] for r in rows if "probe_pass_at_1" in r]


def test_sweep_commands_carry_report_to(tmp_path, capsys):
    from mitigate.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("preset: smoke\nreproduce: {seeds: [0], methods: [grpo]}\n")
    argv = ["sweep", str(grid), "--out", str(tmp_path / "s"), "--print-commands", "--report-to", "tensorboard"]
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mitigate")]
    assert lines and all("--report-to tensorboard" in ln for ln in lines)
