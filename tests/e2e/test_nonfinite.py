"""The non-finite guard: a NaN/inf loss term or gradient stops a run with exit status 3, a message
naming the step and the terms, and the last good checkpoint intact and loadable in OUT.partial;
`on_nonfinite=skip` drops the step's update instead and logs it. metrics.jsonl stays strict JSON."""

from __future__ import annotations

import json
import os

import torch

import mitigate.recipes.train as T
from mitigate import cli
from mitigate.policies import load_policy


def strict_rows(path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"bare {token} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def finite(policy) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in policy.model.parameters())


def test_absurd_pretraining_lr_stops_at_the_first_nan(tmp_path, capsys):
    out = tmp_path / "base"
    rc = cli.main(["pretrain", "--preset", "smoke", "--out", str(out), "--quiet", "--set", "pretrain.lr=1e4",
                   "--set", "pretrain.save_every=2", "--set", "pretrain.log_every=1"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "pretrain stopped at step" in err and "non-finite next-token loss=nan" in err
    assert "pretrain.on_nonfinite=skip" in err
    assert not out.exists()  # no checkpoint under the real name
    work = tmp_path / "base.partial"
    (kept,) = os.listdir(work / "checkpoints")
    step = int(err.split("stopped at step ")[1].split(":")[0])
    assert int(kept.split("-")[1]) == (step - 1) // 2 * 2 and f"(step {(step - 1) // 2 * 2}, in '" in err
    policy, meta = load_policy(work / "checkpoints" / kept)  # the last good checkpoint loads, and is finite
    assert meta["method"] == "base" and finite(policy)
    rows = strict_rows(work / "metrics.jsonl")
    assert rows[-1]["step"] == step and rows[-1]["stopped"] is True
    assert rows[-1]["nonfinite"]["next-token loss"] == "nan"  # written as a string, never a bare NaN


def nan_anchor_at(monkeypatch, step: int) -> None:
    """The KL anchor turns NaN at one training step (its `step`-th call, one inner epoch per step)."""
    anchor, calls = T.reverse_kl_anchor, []

    def broken(*a, **k):
        calls.append(1)
        value, extra = anchor(*a, **k)
        return (value * float("nan"), extra) if len(calls) == step else (value, extra)

    monkeypatch.setattr(T, "reverse_kl_anchor", broken)


def train_argv(base, out, *sets):
    argv = ["train", "--preset", "smoke", "--init", str(base), "--out", str(out), "--quiet", "--set", "train.steps=4",
            "--set", "train.save_every=2"]
    for s in sets:
        argv += ["--set", s]
    return argv


def test_nan_in_training_stops_and_keeps_the_last_good_checkpoint(smoke_base, tmp_path, monkeypatch, capsys):
    nan_anchor_at(monkeypatch, 3)
    out = tmp_path / "run"
    rc = cli.main(train_argv(smoke_base, out))
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "train stopped at step 3: non-finite kl_anchor=nan" in err
    assert "objective" not in err.split("non-finite")[1].split(";")[0]  # only the terms that were non-finite
    work = tmp_path / "run.partial"
    assert not out.exists() and os.listdir(work / "checkpoints") == ["step-000002"]
    policy, _ = load_policy(work / "checkpoints" / "step-000002")
    assert finite(policy)
    assert strict_rows(work / "metrics.jsonl")[-1]["nonfinite"] == {"kl_anchor": "nan", "gradient norm": "nan"}


def test_skip_drops_the_update_and_logs_it(smoke_base, tmp_path, monkeypatch, capsys):
    nan_anchor_at(monkeypatch, 2)
    out = tmp_path / "run"
    assert cli.main(train_argv(smoke_base, out, "train.on_nonfinite=skip")) == 0
    assert "step 2 skipped (train.on_nonfinite=skip)" in capsys.readouterr().err
    rows = {r["step"]: r for r in strict_rows(out / "metrics.jsonl")}
    assert rows[2]["skipped"] is True and rows[2]["loss"] == "nan" and "kl_anchor" in rows[2]["nonfinite"]
    assert not any(r.get("skipped") for s, r in rows.items() if s != 2)
    policy, _ = load_policy(out)
    assert finite(policy)
