"""Runs that survive faults: a smoke run killed at a step (in process, or by SIGKILL in a forked
child) and continued with the same command plus `--resume` ends bit-identical to an uninterrupted
run: final weights, metrics.jsonl, budget, eval JSON and summary (wall-clock fields aside)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
from concurrent.futures.process import BrokenProcessPool

import pytest

from mitigate import cli
from mitigate.core import resume as R
from mitigate.core.io import MARKER, PARTIAL_MARKER

WALL = {"seconds", "wall_seconds"}
TRAIN = ["--preset", "smoke", "--quiet", "--set", "train.steps=5", "--set", "train.save_every=2",
         "--set", "train.lr=3e-3"]
OBJECTIVES = {  # every kind of state a run carries: plain, EMA teacher, ot/replay reference sets
    "grpo": [],
    "sdsd_ema": ["--set", "train.objective={name: sdsd, teacher: ema}"],
    "sdsd_ot_replay": ["--set", "train.objective={name: sdsd}",
                       "--set", "train.regularizers=[{name: ot, coef: 1.0, replay: 3.0}]"],
    "grpo_replay": ["--set", "train.regularizers=[{name: replay, coef: 0.3}]"],
}


class Killed(BaseException):
    """Stands for the process dying at a fault point (nothing in mitigate catches it)."""


def kill_at(monkeypatch, where: str, step) -> None:
    def fault(w, s):
        if (w, s) == (where, step):
            raise Killed(f"{w}:{s}")

    monkeypatch.setattr(R, "fault_point", fault)


def sigkilled(argv: list[str], fault: str) -> None:
    """Run `mitigate argv` in a forked child that SIGKILLs itself at `fault` (no cleanup runs)."""

    def child():
        os.environ[R.FAULT_ENV] = fault
        sys.exit(cli.main(argv))

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL, p.exitcode


def without_wall(tree):
    if isinstance(tree, dict):
        return {k: without_wall(v) for k, v in tree.items() if k not in WALL}
    if isinstance(tree, list):
        return [without_wall(v) for v in tree]
    return tree


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"bare {token} in JSON")

    return json.loads(text, parse_constant=refuse)


def snapshot(folder) -> dict:
    """Every file of a finished run folder: bytes, JSON files and logs without wall-clock fields."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == "meta.json":  # meta.json records argv and the resumes
            continue
        if p.suffix == ".md":  # summary.md prints wall time; its numbers come from summary.json
            out[str(p.relative_to(folder))] = "present"
            continue
        key = str(p.relative_to(folder))
        if p.suffix == ".json":
            out[key] = without_wall(json.loads(p.read_text()))
        elif p.suffix == ".jsonl":
            out[key] = [without_wall(strict_json(line)) for line in p.read_text().splitlines()]
        else:
            out[key] = p.read_bytes()
    return out


def assert_same_run(a, b) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa) == sorted(sb)
    # bytes compared by their digests: pytest's diff of two megabyte strings takes tens of minutes
    differ = [k for k in sa if sa[k] != sb[k]]
    assert differ == [], f"differ: {differ}"
    assert (b / MARKER).is_file() and not (b / "checkpoints").exists()
    assert not b.with_name(b.name + ".partial").exists()


@pytest.fixture(scope="module")
def uninterrupted(smoke_base, tmp_path_factory):
    """One uninterrupted run per objective, made on first use."""
    root, runs = tmp_path_factory.mktemp("uninterrupted"), {}

    def get(name):
        if name not in runs:
            out = root / name
            assert cli.main(["train", *TRAIN, *OBJECTIVES[name], "--init", str(smoke_base), "--out", str(out)]) == 0
            runs[name] = out
        return runs[name]

    return get


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_train_killed_twice_resumes_bit_for_bit(name, smoke_base, tmp_path, uninterrupted, monkeypatch):
    first, second = sorted(random.Random(name).sample(range(2, 6), 2))  # a different pair per objective
    out = tmp_path / "run"
    argv = ["train", *TRAIN, *OBJECTIVES[name], "--init", str(smoke_base), "--out", str(out)]
    kill_at(monkeypatch, "train", first)
    with pytest.raises(Killed):
        cli.main(argv)
    assert not out.exists()
    kill_at(monkeypatch, "train", second)
    with pytest.raises(Killed):
        cli.main([*argv, "--resume"])
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    assert cli.main([*argv, "--resume"]) == 0
    assert_same_run(uninterrupted(name), out)
    resumed = json.loads((out / "meta.json").read_text())["resumed"]
    assert resumed[-1]["step"] == (second - 1) // 2 * 2  # the last checkpoint before the second kill


def test_sigkill_anywhere_then_resume(smoke_base, tmp_path, uninterrupted, capsys):
    """A real SIGKILL: before a step, and halfway through writing a checkpoint (the previous one
    survives); the refusals in between leave the unfinished run untouched."""
    ref = uninterrupted("sdsd_ot_replay")
    for fault in ("train:5", "checkpoint:4"):
        out = tmp_path / fault.replace(":", "-")
        argv = ["train", *TRAIN, *OBJECTIVES["sdsd_ot_replay"], "--init", str(smoke_base), "--out", str(out)]
        sigkilled(argv, fault)
        work = out.with_name(out.name + ".partial")
        kept = "step-000004" if fault == "train:5" else "step-000002"  # the last one written whole
        assert (work / PARTIAL_MARKER).is_file() and sorted(os.listdir(work / "checkpoints")) == (
            [".step-000004.tmp"] if fault == "checkpoint:4" else []) + [kept]
        before = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name != ".owner")
        assert cli.main(argv) == 2  # the same command without --resume
        assert "pass --resume" in capsys.readouterr().err
        assert cli.main([*argv, "--resume", "--set", "train.lr=1e-3"]) == 2  # another config
        err = capsys.readouterr().err
        assert "cannot resume" in err and "train.lr: 0.003 -> 0.001" in err
        assert sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name != ".owner") == before
        if fault == "train:5":  # a setting that changes no number may differ (recorded in config.yaml)
            assert cli.main([*argv, "--resume", "--set", "train.save_every=3"]) == 0
            a, b = snapshot(ref), snapshot(out)
            assert a["checkpoint/model.safetensors"] == b["checkpoint/model.safetensors"]
            assert a["metrics.jsonl"] == b["metrics.jsonl"] and a["budget.json"] == b["budget.json"]
        else:
            assert cli.main([*argv, "--resume"]) == 0
            assert_same_run(ref, out)
        done = snapshot(out)
        assert cli.main([*argv, "--resume"]) == 0  # finished: nothing to do
        assert snapshot(out) == done


def test_a_resume_without_the_random_state_is_not_exact(smoke_base, tmp_path, uninterrupted, monkeypatch):
    """The comparison above has teeth: skipping one restore step changes the numbers."""
    out = tmp_path / "run"
    argv = ["train", *TRAIN, "--init", str(smoke_base), "--out", str(out)]
    kill_at(monkeypatch, "train", 4)
    with pytest.raises(Killed):
        cli.main(argv)
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    monkeypatch.setattr(R.Restored, "restore_rng", lambda self, streams: None)
    assert cli.main([*argv, "--resume"]) == 0
    assert snapshot(out)["checkpoint/model.safetensors"] != snapshot(uninterrupted("grpo"))[
        "checkpoint/model.safetensors"]


def test_pretrain_resumes_bit_for_bit(tmp_path, monkeypatch):
    argv = ["pretrain", "--preset", "smoke", "--quiet", "--set", "pretrain.steps=24", "--set", "pretrain.save_every=5",
            "--set", "pretrain.log_every=4"]
    ref = tmp_path / "ref"
    assert cli.main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "run"
    step = random.Random(0).randrange(6, 24)
    kill_at(monkeypatch, "pretrain", step)
    with pytest.raises(Killed):
        cli.main([*argv, "--out", str(out)])
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 0
    assert_same_run(ref, out)


def test_reproduce_killed_between_and_inside_runs(tmp_path, monkeypatch):
    """Killed (SIGKILL) between two methods, then inside a training run: the resumed comparison
    reuses the finished base, run and evaluations and ends with the same summary and files."""
    argv = ["reproduce", "--preset", "smoke", "--quiet", "--set", "reproduce.methods=[base, grpo, sdsd_ot]",
            "--set", "reproduce.seeds=[0]", "--set", "reproduce.interpolation=[0.5]", "--set", "reproduce.n_boot=100",
            "--set", "pretrain.steps=20", "--set", "pretrain.save_every=8", "--set", "train.steps=4",
            "--set", "train.save_every=2", "--jobs", "1"]  # in this process: the fault points are patched here
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli.main([*argv, "--out", str(ref)]) == 0
    sigkilled([*argv, "--out", str(out)], "reproduce:sdsd_ot-seed0")
    work = out.with_name(out.name + ".partial")
    assert (work / "grpo-seed0" / "eval.json").is_file() and (work / "base" / MARKER).is_file()
    finished = (work / "grpo-seed0" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    kill_at(monkeypatch, "train", 3)  # grpo-seed0 is finished: the first loop to reach step 3 is sdsd_ot's
    with pytest.raises(Killed):
        cli.main([*argv, "--out", str(out), "--resume"])
    assert (work / "sdsd_ot-seed0.partial" / "checkpoints" / "step-000002").is_dir()
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 0
    assert_same_run(ref, out)
    assert (out / "grpo-seed0" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == finished  # reused


def test_reproduce_worker_killed_then_resumed_equals_one_process(tmp_path, monkeypatch, capsys):
    """`--jobs 2`: a worker SIGKILLed at the start of its run breaks the pool (the other worker's
    run dies with it, mid-training); `--resume` finishes both, and the comparison equals the one
    made in a single process (`--jobs 1`): one torch thread per run, wherever it runs."""
    argv = ["reproduce", "--preset", "smoke", "--quiet", "--set", "reproduce.methods=[base, grpo, sdsd_ot]",
            "--set", "reproduce.seeds=[0]", "--set", "reproduce.interpolation=[0.5]", "--set", "reproduce.n_boot=100",
            "--set", "pretrain.steps=20", "--set", "train.steps=6", "--set", "train.save_every=2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli.main([*argv, "--out", str(ref), "--jobs", "1"]) == 0
    monkeypatch.setenv(R.FAULT_ENV, "reproduce:sdsd_ot-seed0")  # spawned workers inherit it
    with pytest.raises(BrokenProcessPool):
        cli.main([*argv, "--out", str(out), "--jobs", "2"])
    err = capsys.readouterr().err
    assert "sdsd_ot-seed0" in err and "failed" in err and "--resume" in err
    work = out.with_name(out.name + ".partial")
    assert (work / "base" / "eval.json").is_file() and not (work / "sdsd_ot-seed0").exists()
    monkeypatch.delenv(R.FAULT_ENV)
    assert cli.main([*argv, "--out", str(out), "--jobs", "2", "--resume"]) == 0
    assert_same_run(ref, out)


def test_stateful_terms_without_state_are_refused():
    class Counter:  # a class term (state across steps) without state_dict / load_state_dict
        def __init__(self):
            self.calls = 0

    def plain(batch, ctx, cfg):
        return None

    terms = [("objective", plain), ("regularizers[0]", Counter())]
    tensors, record = R.term_state(terms, prompts=[])
    assert record == {"regularizers[0]": {"class": "Counter", "resumable": False}}
    with pytest.raises(R.ResumeError, match=r"regularizers\[0\] \(Counter\) keeps state across steps"):
        R.restore_terms(terms, [], tensors, record)


def _two_process_worker(init: str, out: str, kill, resume: bool) -> None:
    """In each forked process: train (killed at `kill` or resumed), like test_distributed's worker."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the fork inherits the parent's singleton
    import mitigate.recipes.train as T
    from mitigate import config as C

    def fault(w, s):
        if kill and (w, s) == ("train", kill):
            raise Killed(f"{w}:{s}")

    R.fault_point = fault
    cfg = C.load(preset="smoke", overrides=["train.objective.name=sdsd", "train.lr=3e-3", "train.steps=5",
                                            "train.save_every=2",
                                            "train.regularizers=[{name: ot, coef: 1.0, replay: 1.0}]"])
    try:
        T.train(cfg, init, out, quiet=True, resume=resume)
    except Killed:
        pass


@pytest.mark.slow
def test_two_processes_resume_bit_for_bit(smoke_base, tmp_path):
    """Each process writes its own random streams and reference sets into one checkpoint (about a
    minute on two cores, hence slow; the debug launcher's fixed port: never two at once)."""
    from accelerate import debug_launcher

    init = str(smoke_base / "checkpoint")
    debug_launcher(_two_process_worker, args=(init, str(tmp_path / "a"), None, False), num_processes=2)
    debug_launcher(_two_process_worker, args=(init, str(tmp_path / "b"), 4, False), num_processes=2)
    step = tmp_path / "b.partial" / "checkpoints" / "step-000002"
    assert {"rank-0.safetensors", "rank-1.safetensors", "rank-0.json", "rank-1.json"} <= set(os.listdir(step))
    debug_launcher(_two_process_worker, args=(init, str(tmp_path / "b"), None, True), num_processes=2)
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "budget.json").read_text())["processes"] == 2
