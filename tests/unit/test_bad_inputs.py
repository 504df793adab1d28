"""No silent wrong answers: the bad inputs of issue 16, each through the CLI. Every case exits with
status 2 (130 for Ctrl-C) and a message naming the problem, and leaves nothing half-written. The
table of cases is docs/robustness.md; the config-value cases are in test_config_cli.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch

from mitigate import cli
from mitigate import config as C
from mitigate.core import resume as R
from mitigate.policies import POLICIES
from mitigate.tasks import TASKS
from tests.unit.conftest import smoke


def run_err(capsys, argv: list[str], code: int = 2) -> str:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == code, captured
    assert f"mitigate {argv[0]}: " in captured.err
    return captured.err


@pytest.fixture
def ckpt_copy(smoke_base, tmp_path):
    """A writable copy of the smoke base checkpoint, to damage."""
    dst = tmp_path / "base"
    shutil.copytree(smoke_base, dst)
    return dst / "checkpoint"


# ----------------------------------------------------------------------------- eval

def test_eval_refuses_another_task(capsys, smoke_base, tmp_path):
    err = run_err(capsys, ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"),
                           "--set", "task.n_concepts=8"])
    assert "change the task" in err and "task.n_concepts: 5 -> 8" in err
    assert os.listdir(tmp_path) == []


def test_eval_json_records_task_config_and_overrides(smoke_base, tmp_path):
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--ckpt", str(smoke_base), "--out", str(out), "--samples", "2", "--quiet",
                     "--set", "eval.max_prompts=2"]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == C.to_dict(C.load(preset="smoke").task)
    assert res["config"]["eval"]["samples"] == 2 and res["config"]["eval"]["max_prompts"] == 2
    assert res["overrides"] == ["eval.max_prompts=2", "eval.samples=2"]


@pytest.mark.parametrize("command", ["reproduce", "sweep"])
def test_jobs_must_be_positive(capsys, tmp_path, command):
    grid = Path(__file__).resolve().parents[2] / "baselines" / "ablations" / "entropy.yaml"
    head = [command, str(grid)] if command == "sweep" else [command, "--preset", "smoke"]
    err = run_err(capsys, [*head, "--out", str(tmp_path / "out"), "--quiet", "--jobs", "0"])
    assert "--jobs must be at least 1" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("samples", ["0", "-3"])
def test_eval_samples_must_be_positive(capsys, smoke_base, tmp_path, samples):
    err = run_err(capsys, ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"), "--samples", samples])
    assert "--samples must be >= 1" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["pretrain", "train", "eval"])
def test_negative_seed(capsys, smoke_base, tmp_path, command):
    t0 = time.time()
    if command == "eval":
        argv = ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"), "--seed", "-1"]
    else:
        argv = smoke(command, tmp_path / "out", extra=["--seed", "-1"] + (
            ["--init", str(smoke_base)] if command == "train" else []))
    err = run_err(capsys, argv)
    assert "--seed must be an integer in [0, 2**32), got -1" in err
    assert time.time() - t0 < 5 and os.listdir(tmp_path) == []
    with pytest.raises(C.ConfigError, match="'seed' must be >= 0"):  # the same rule in the Python API
        C.load(preset="smoke", overrides=["seed=-1"])


# ----------------------------------------------------------------------------- config values

@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_non_finite_numbers(capsys, tmp_path, value):
    err = run_err(capsys, smoke("pretrain", tmp_path / "out", f"train.lr={value}"))
    assert "'train.lr' must be a finite number" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["pretrain", "train", "eval", "reproduce"])
def test_cuda_without_a_gpu(capsys, smoke_base, tmp_path, command):
    if command == "eval":
        argv = ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"), "--set", "device=cuda"]
    else:
        argv = smoke(command, tmp_path / "out", "device=cuda",
                     extra=["--init", str(smoke_base)] if command == "train" else [])
    err = run_err(capsys, argv)
    assert "device 'cuda' requested but no CUDA GPU is available" in err and "allowed here: cpu, auto" in err
    assert os.listdir(tmp_path) == []


def test_empty_method_list(capsys, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert C.load(config=empty) == C.load()  # an empty YAML file is a valid (empty) config
    err = run_err(capsys, ["reproduce", "--config", str(empty), "--preset", "smoke", "--out", str(tmp_path / "out"),
                           "--set", "reproduce.methods=[]"])
    assert "reproduce.methods is empty" in err and "allowed: base, grpo" in err
    err = run_err(capsys, smoke("reproduce", tmp_path / "out", "reproduce.seeds=[]"))
    assert "reproduce.seeds is empty" in err
    assert os.listdir(tmp_path) == ["empty.yaml"]


def test_yaml_syntax_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1e-3\n")
    err = run_err(capsys, ["pretrain", "--config", str(bad), "--out", str(tmp_path / "out")])
    assert "is not valid YAML" in err
    assert os.listdir(tmp_path) == ["bad.yaml"]


@pytest.mark.parametrize("key,registry", [("task", TASKS), ("model", POLICIES)])
def test_unknown_task_and_policy_names(capsys, tmp_path, key, registry):
    err = run_err(capsys, smoke("pretrain", tmp_path / "out", f"{key}.name=nope"))
    assert f"unknown {registry.kind} 'nope'" in err and "registered: " + ", ".join(registry.names()) in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- damaged checkpoints

def test_truncated_weights(capsys, ckpt_copy, tmp_path):
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for argv in (["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")],
                 smoke("train", tmp_path / "out", extra=["--init", str(ckpt_copy)])):
        err = run_err(capsys, argv)
        assert "model.safetensors' is truncated" in err and "Traceback" not in err
    weights.write_bytes(b"\x01")
    err = run_err(capsys, ["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")])
    assert "truncated or not a safetensors file" in err
    assert sorted(os.listdir(tmp_path)) == ["base"]


@pytest.mark.parametrize("name", ["mitigate.json", "config.json"])
def test_corrupt_checkpoint_json(capsys, ckpt_copy, tmp_path, name):
    f = ckpt_copy / name
    f.write_text(f.read_text()[: len(f.read_text()) // 2])
    err = run_err(capsys, ["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")])
    assert name in err and "is not valid JSON" in err and "truncated or corrupt" in err
    assert sorted(os.listdir(tmp_path)) == ["base"]


def test_checkpoint_config_is_validated(capsys, ckpt_copy, tmp_path):
    f = ckpt_copy / "mitigate.json"
    meta = json.loads(f.read_text())
    meta["config"]["train"]["lrr"] = 1.0
    f.write_text(json.dumps(meta))
    err = run_err(capsys, ["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")])
    assert "records a config this version cannot use" in err and "train.lrr" in err


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("command", ["pretrain", "train", "reproduce", "eval"])
def test_out_that_is_or_lies_under_a_file(capsys, smoke_base, tmp_path, command):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    for out, reason in ((a_file, "is a file" if command != "eval" else "already exists"),
                        (a_file / "run", "which is a file, not a folder")):
        if command == "eval":
            argv = ["eval", "--ckpt", str(smoke_base), "--out", str(out)]
        else:
            argv = smoke(command, out, extra=["--init", str(smoke_base)] if command == "train" else [])
        err = run_err(capsys, argv)
        assert reason in err, err
    assert os.listdir(tmp_path) == ["notes.txt"] and a_file.read_text() == "keep"


def read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (ro / "probe").write_text("x")
    except OSError:
        return ro
    (ro / "probe").unlink()  # root ignores modes: fall back to a read-only place of the system
    for cand in ("/sys", "/proc/1"):
        try:
            (os.path.exists(cand) and open(os.path.join(cand, "mitigate-probe"), "w").close())
        except OSError:
            return type(tmp_path)(cand)
    pytest.skip("no read-only folder available to this user")


@pytest.mark.parametrize("command", ["pretrain", "eval", "reproduce"])
def test_read_only_out_is_refused_before_any_work(capsys, smoke_base, tmp_path, command):
    ro = read_only_folder(tmp_path)
    t0 = time.time()
    if command == "eval":
        argv = ["eval", "--ckpt", str(smoke_base), "--out", str(ro / "e.json")]
    else:
        argv = smoke(command, ro / "out")
    err = run_err(capsys, argv)
    assert "cannot write in" in err and time.time() - t0 < 5
    if ro.is_relative_to(tmp_path):
        assert os.listdir(ro) == []


# ----------------------------------------------------------------------------- interrupted and resumed runs

def test_ctrl_c_exits_130_and_keeps_what_can_be_resumed(capsys, smoke_base, tmp_path, monkeypatch):
    def interrupt(where, step):
        if (where, step) == ("train", 3):
            raise KeyboardInterrupt

    monkeypatch.setattr(R, "fault_point", interrupt)
    argv = smoke("train", tmp_path / "run", "train.steps=4", "train.save_every=2", extra=["--init", str(smoke_base)])
    err = run_err(capsys, argv, code=130)
    assert "interrupted" in err and "--resume" in err
    assert os.listdir(tmp_path / "run.partial" / "checkpoints") == ["step-000002"]
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    assert cli.main([*argv, "--resume"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_resume_with_another_config_says_what_differs(capsys, stopped_run):
    argv, work = stopped_run
    capsys.readouterr()
    err = run_err(capsys, [*argv, "--resume", "--set", "train.kl_coef=0.5", "--set", "seed=3"])
    assert "cannot resume" in err and "train.kl_coef: 0.02 -> 0.5" in err and "seed: 0 -> 3" in err
    assert (work / "checkpoints" / "step-000002").is_dir()


def test_resume_from_a_damaged_checkpoint(capsys, stopped_run):
    argv, work = stopped_run
    step = work / "checkpoints" / "step-000002"
    opt = step / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:-8])
    err = run_err(capsys, [*argv, "--resume"])
    assert "optimizer.safetensors' is truncated" in err
    (step / "state.json").write_text("{\"format\": 1, ")
    err = run_err(capsys, [*argv, "--resume"])
    assert "state.json' is not valid JSON" in err
    assert step.is_dir()  # a refused resume removes nothing


def test_resume_under_another_package_version(capsys, stopped_run, monkeypatch):
    argv, _ = stopped_run
    import mitigate.recipes.train as T
    from mitigate.core.io import versions

    monkeypatch.setattr(T, "versions", lambda: {**versions(), "torch": "0.0.1"})
    err = run_err(capsys, [*argv, "--resume"])
    assert "versions changed (torch:" in err and "-> '0.0.1'" in err


def test_a_folder_in_the_way_of_the_work_folder(capsys, smoke_base, tmp_path):
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "mine.txt").write_text("a user's file")
    err = run_err(capsys, smoke("train", tmp_path / "run", extra=["--init", str(smoke_base)]))
    assert "was not created by mitigate" in err
    assert os.listdir(tmp_path / "run.partial") == ["mine.txt"]
