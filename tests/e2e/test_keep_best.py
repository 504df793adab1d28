"""`train.keep: best_probe` (early stopping on the ID-validation probe): every step runs, and the
run's checkpoint holds the weights of the probed step with the best pass@1, which equal a run
stopped at that step."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from mitigate import config as C
from mitigate.recipes.train import train


def test_best_probe_keeps_the_best_probed_step(smoke_cfg, smoke_base, tmp_path):
    common = {"train.objective": {"name": "sdsd"}, "train.eval_every": 1, "train.probe_prompts": 4,
              "train.probe_samples": 4}
    cfg = C.with_overrides(smoke_cfg, {**common, "train.steps": 4, "train.keep": "best_probe"})
    run = train(cfg, smoke_base, tmp_path / "best", quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    probed = [(r["probe_pass_at_1"], r["step"]) for r in rows if r["step"] >= 1 and "probe_pass_at_1" in r]
    assert len(probed) == 4 and len(rows) == 5  # every step ran and was logged
    best_value = max(v for v, _ in probed)
    best_step = next(s for v, s in probed if v == best_value)  # the first of equal values
    kept = json.loads((run / "kept.json").read_text())
    assert kept == {"keep": "best_probe", "step": best_step, "probe_pass_at_1": best_value}
    assert json.loads((run / "budget.json").read_text())["rollouts"] == 4 * 4 * 4  # all 4 steps counted
    stopped = train(C.with_overrides(smoke_cfg, {**common, "train.steps": best_step}), smoke_base,
                    tmp_path / "stopped", quiet=True)
    a = load_file(run / "checkpoint" / "model.safetensors")
    b = load_file(stopped / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run / "best_probe").exists()


def test_keep_last_writes_no_selection_record(smoke_cfg, smoke_base, tmp_path):
    run = train(C.with_overrides(smoke_cfg, {"train.steps": 1}), smoke_base, tmp_path / "last", quiet=True)
    assert (run / "checkpoint" / "model.safetensors").is_file() and not (run / "kept.json").exists()


def _weights(folder):
    return load_file(folder / "checkpoint" / "model.safetensors")


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_horizon_is_exactly_the_shorter_run(smoke_cfg, smoke_base, tmp_path):
    """`train.horizons`: OUT/horizon-<h>/ holds bit for bit the checkpoint and kept step of the same
    run with steps=h, for best_probe and last; the long run's own checkpoint is unchanged."""
    common = {"train.objective": {"name": "sdsd", "teacher": "ema", "ema_decay": 0.9}, "train.eval_every": 2,
              "train.probe_prompts": 4, "train.probe_samples": 4, "train.save_every": 0}
    for keep in ("best_probe", "last"):
        long = train(C.with_overrides(smoke_cfg, {**common, "train.keep": keep, "train.steps": 6,
                                                  "train.horizons": [2, 4]}), smoke_base, tmp_path / f"{keep}6",
                     quiet=True)
        plain = train(C.with_overrides(smoke_cfg, {**common, "train.keep": keep, "train.steps": 6}), smoke_base,
                      tmp_path / f"{keep}6plain", quiet=True)
        assert _same(_weights(long), _weights(plain))
        for h in (2, 4):
            short = train(C.with_overrides(smoke_cfg, {**common, "train.keep": keep, "train.steps": h}), smoke_base,
                          tmp_path / f"{keep}{h}", quiet=True)
            assert _same(_weights(long / f"horizon-{h}"), _weights(short))
            kept = json.loads((long / f"horizon-{h}" / "kept.json").read_text())
            assert kept["horizon"] == h
            if keep == "best_probe":
                assert kept["step"] == json.loads((short / "kept.json").read_text())["step"]
        # the horizons moved nothing in the long run but its own folders
        assert not _same(_weights(long / "horizon-2"), _weights(long))


def test_bad_horizons_are_refused_before_any_output(smoke_cfg, smoke_base, tmp_path):
    import pytest

    for horizons, words in (([6], "between 1"), ([0], "between 1"), ([3], "multiple of train.eval_every"),
                            ([2, 2], "repeated"), (["2"], "whole number")):
        cfg = C.with_overrides(smoke_cfg, {"train.steps": 6, "train.keep": "best_probe", "train.eval_every": 2,
                                           "train.horizons": horizons})
        with pytest.raises(C.ConfigError, match=words):
            train(cfg, smoke_base, tmp_path / "bad", quiet=True)
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
