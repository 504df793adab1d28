"""Bad input at the command line: exit status 2, a message naming the problem and the allowed
choices, and no half-written output."""

from __future__ import annotations

import os

import pytest

from mitigate import cli
from mitigate import config as C
from mitigate.core.io import MARKER
from mitigate.objectives import OBJECTIVES
from mitigate.policies.base import META_FILE
from mitigate.regularizers import REGULARIZERS


def run_err(capsys, argv: list[str]) -> str:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert captured.err.startswith(f"mitigate {argv[0]}: error: ")
    return captured.err


def assert_nothing_written(folder):
    assert os.listdir(folder) == [], "no output and no temporary folder may be left behind"


def pretrain_args(out, *sets, preset="smoke"):
    argv = ["pretrain", "--preset", preset, "--out", str(out), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    return argv


# ----------------------------------------------------------------------------- config values

def test_unknown_preset(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", preset="smok"))
    assert "unknown preset 'smok'" in err
    assert "did you mean 'smoke'" in err
    for p in C.presets():
        assert p in err
    assert_nothing_written(tmp_path)


def test_unknown_key_did_you_mean(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.lrr=1e-3"))
    assert "unknown config key 'train.lrr'" in err
    assert "did you mean 'train.lr'" in err
    assert "kl_coef" in err and "prompts_per_step" in err  # the allowed keys of the section
    assert_nothing_written(tmp_path)


def test_unknown_top_level_section(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "trian.lr=1e-3"))
    assert "unknown config key 'trian'" in err and "did you mean 'train'" in err
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("assignment,key,choices", [
    ("device=tpu", "device", ["cpu", "cuda", "auto"]),
    ("train.objective.divergence=kl", "train.objective.divergence", ["reverse_kl", "forward_kl", "jsd"]),
    ("train.objective.aggregation=mean", "train.objective.aggregation", ["token_mean", "seq_mean", "seq_sum"]),
    ("eval.id_split=test", "eval.id_split", ["id_test", "id_val"]),
])
def test_bad_choice(capsys, tmp_path, assignment, key, choices):
    sets = [assignment]
    if key == "train.objective.divergence":
        sets = ["train.objective={name: sdsd, divergence: kl}"]
    err = run_err(capsys, pretrain_args(tmp_path / "out", *sets))
    assert f"for '{key}'" in err
    assert "allowed: " + ", ".join(choices) in err
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("assignment,key", [
    ("train.lr=-1", "train.lr"),
    ("pretrain.lr=-0.001", "pretrain.lr"),
    ("train.kl_coef=-0.5", "train.kl_coef"),
    ("train.group_size=1", "train.group_size"),
    ("eval.samples=0", "eval.samples"),
    ("train.objective={name: sdsd_cmi, coef: -1}", "train.objective.coef"),
    ("train.objective={name: sdsd_marginal, M: 0}", "train.objective.M"),
])
def test_out_of_range(capsys, tmp_path, assignment, key):
    err = run_err(capsys, pretrain_args(tmp_path / "out", assignment))
    assert f"'{key}' must be >=" in err
    assert_nothing_written(tmp_path)


def test_negative_regularizer_coefficient(capsys, tmp_path):
    assert "entropy" in REGULARIZERS.names()
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.regularizers=[{name: entropy, coef: -1}]"))
    assert "'train.regularizers[0].coef' must be >= 0" in err
    assert_nothing_written(tmp_path)


def test_wrong_types(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.steps=2.5"))
    assert "'train.steps' must be an integer" in err
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.lr=fast"))
    assert "'train.lr' must be a number" in err
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.lr"))
    assert "key.sub=value" in err
    assert_nothing_written(tmp_path)


def test_unknown_objective_lists_registered(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.objective.name=sdsd_marginl"))
    assert "unknown objective 'sdsd_marginl'" in err
    assert "did you mean 'sdsd_marginal'" in err
    names = OBJECTIVES.names()
    assert {"grpo", "sdsd", "sdsd_cmi", "sdsd_marginal"} <= set(names)
    assert "registered: " + ", ".join(names) in err
    assert_nothing_written(tmp_path)


def test_unknown_regularizer_lists_registered(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.regularizers=[{name: entropi}]"))
    assert "unknown regularizer 'entropi'" in err and "did you mean 'entropy'" in err
    assert "registered: " + ", ".join(REGULARIZERS.names()) in err
    assert_nothing_written(tmp_path)


def test_unknown_objective_field(capsys, tmp_path):
    err = run_err(capsys, pretrain_args(tmp_path / "out", "train.objective={name: grpo, clip: 0.1}"))
    assert "unknown config key 'train.objective.clip'" in err and "did you mean 'train.objective.clip_eps'" in err
    assert_nothing_written(tmp_path)


def test_missing_config_file(capsys, tmp_path):
    err = run_err(capsys, ["pretrain", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")])
    assert "config file not found" in err and "nope.yaml" in err
    assert_nothing_written(tmp_path)


def test_config_file_with_typo(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: smoke\ntrain:\n  stpes: 3\n")
    err = run_err(capsys, ["pretrain", "--config", str(cfg), "--out", str(tmp_path / "out")])
    assert "did you mean 'train.steps'" in err
    assert os.listdir(tmp_path) == ["c.yaml"]


def test_unknown_reproduce_method(capsys, tmp_path):
    err = run_err(capsys, ["reproduce", "--preset", "smoke", "--out", str(tmp_path / "out"), "--quiet",
                           "--set", "reproduce.methods=[base, grpo, sdsdd]"])
    assert "unknown method 'sdsdd'" in err
    for name in ["base", *OBJECTIVES.names()]:
        assert name in err
    assert_nothing_written(tmp_path)


# ----------------------------------------------------------------------------- checkpoints

def test_train_missing_checkpoint(capsys, tmp_path):
    err = run_err(capsys, ["train", "--preset", "smoke", "--init", "/nonexistent", "--out", str(tmp_path / "out")])
    assert "/nonexistent" in err and "not found" in err
    assert_nothing_written(tmp_path)


def test_eval_missing_checkpoint(capsys, tmp_path):
    err = run_err(capsys, ["eval", "--ckpt", "/nonexistent", "--out", str(tmp_path / "e.json")])
    assert "/nonexistent" in err
    assert_nothing_written(tmp_path)


def test_folder_without_checkpoint(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    err = run_err(capsys, ["train", "--preset", "smoke", "--init", str(tmp_path / "run"),
                           "--out", str(tmp_path / "out")])
    assert META_FILE in err and str(tmp_path / "run") in err
    assert os.listdir(tmp_path) == ["run"]
    # a checkpoint record without the weights: the message names the missing weights file
    (tmp_path / "run" / META_FILE).write_text('{"policy": "tiny_gpt"}')
    err = run_err(capsys, ["train", "--preset", "smoke", "--init", str(tmp_path / "run"),
                           "--out", str(tmp_path / "out")])
    assert "model.safetensors" in err and str(tmp_path / "run") in err
    assert os.listdir(tmp_path) == ["run"]


def test_eval_bad_override(capsys, smoke_base, tmp_path):
    err = run_err(capsys, ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"),
                           "--set", "eval.samplez=4"])
    assert "did you mean 'eval.samples'" in err
    assert_nothing_written(tmp_path)


def test_train_on_other_task_is_refused(capsys, smoke_base, tmp_path):
    err = run_err(capsys, ["train", "--preset", "smoke", "--init", str(smoke_base), "--out", str(tmp_path / "out"),
                           "--set", "task.n_start=10", "--quiet"])
    assert "change the task or model" in err and "task.n_start" in err
    assert_nothing_written(tmp_path)


# ----------------------------------------------------------------------------- output folders

@pytest.mark.parametrize("command", ["pretrain", "train", "reproduce"])
def test_existing_out_needs_overwrite(capsys, smoke_base, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = [command, "--preset", "smoke", "--out", str(out), "--quiet"]
    if command == "train":
        argv += ["--init", str(smoke_base)]
    err = run_err(capsys, argv)
    assert str(out) in err and "--overwrite" in err
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert os.listdir(tmp_path) == ["out"]


def test_overwrite_replaces(capsys, smoke_base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("")  # a folder mitigate created: the only kind --overwrite replaces
    (out / "keep.txt").write_text("old")
    rc = cli.main(["train", "--preset", "smoke", "--init", str(smoke_base), "--out", str(out), "--quiet",
                   "--overwrite"])
    assert rc == 0
    assert not (out / "keep.txt").exists()
    assert {"checkpoint", "config.yaml", "meta.json", "metrics.jsonl"} <= set(os.listdir(out))
    assert os.listdir(tmp_path) == ["out"]


def test_failure_mid_run_leaves_nothing(monkeypatch, tmp_path):
    import mitigate.policies.tiny_gpt

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mitigate.policies.tiny_gpt, "save_checkpoint", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main(pretrain_args(tmp_path / "out", "pretrain.steps=2"))
    assert_nothing_written(tmp_path)


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--preset", "smoke"])  # --init and --out are required
    assert e.value.code == 2
    assert "--init" in capsys.readouterr().err
