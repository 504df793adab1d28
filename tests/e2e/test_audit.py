"""`mitigate audit`: any checkpoints of one task compared with the package's evaluation. On the
graph task it reproduces a reproduce run's numbers for the same samples (seed and n); on
sciqa-smoke it compares two Hugging Face folders; bad inputs are refused before any sampling."""

from __future__ import annotations

import json

import pytest

from mitigate import config as C
from mitigate.recipes.audit import audit
from mitigate.recipes.reproduce import reproduce


@pytest.fixture(scope="module")
def compared(smoke_cfg, smoke_base, tmp_path_factory):
    """A reproduce folder with base, GRPO and SDSD at seed 0 on the shared smoke base."""
    cfg = C.with_overrides(smoke_cfg, {"reproduce.methods": ["base", "grpo", "sdsd"], "reproduce.seeds": [0],
                                       "reproduce.sharpening": []})
    return reproduce(cfg, tmp_path_factory.mktemp("audit") / "cmp", quiet=True, base=smoke_base, jobs=1)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out


def test_audit_reproduces_the_summary_for_the_same_samples(compared, smoke_base, tmp_path):
    got = audit(smoke_base, [compared / "grpo-seed0", compared / "sdsd-seed0"], tmp_path / "audit",
                names=["grpo", "sdsd"], seed=0, quiet=True)
    summary = json.loads((compared / "summary.json").read_text())
    for m in ("base", "grpo", "sdsd"):
        for block in ("id", "ood"):
            want, have = _flat(summary["methods"][m][block]), _flat(got["methods"][m][block])
            shared = set(want) & set(have)
            assert len(shared) > 10
            assert all(want[k] == pytest.approx(have[k], abs=1e-12) for k in shared), m
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert set(written["verdicts"]) == {"grpo", "sdsd"}
    assert all(v.startswith(f"{m} against the base: pass@1 ") for m, v in written["verdicts"].items())
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "## Verdicts" in md and "pass@k" in md
    assert "paired" in written["methods"]["grpo"] and "base" in written["methods"]["grpo"]["paired"]
    from analysis.__main__ import main as analysis_main

    assert analysis_main(["figures", str(tmp_path / "audit")]) == 0
    assert all((tmp_path / "audit" / f"{stem}.{fmt}").is_file() for stem in ("pass_at_k", "diversity")
               for fmt in ("png", "pdf"))


def test_audit_refuses_bad_inputs_before_writing(compared, smoke_base, smoke_cfg, tmp_path):
    from mitigate.policies.base import CheckpointError
    from mitigate.recipes.pretrain import pretrain

    out = tmp_path / "refused"
    with pytest.raises(CheckpointError, match="does not exist"):
        audit(smoke_base, [tmp_path / "missing"], out, quiet=True)
    with pytest.raises(C.ConfigError, match=r"--k 99 is outside 1\.\.8"):
        audit(smoke_base, [compared / "grpo-seed0"], out, k=99, quiet=True)
    other = pretrain(C.with_overrides(smoke_cfg, {"task.seed": 7, "pretrain.steps": 1}), tmp_path / "other",
                     quiet=True)
    with pytest.raises(C.ConfigError, match="another task"):
        audit(smoke_base, [other], out, quiet=True)
    with pytest.raises(C.ConfigError, match="distinct and not 'base'"):
        audit(smoke_base, [compared / "grpo-seed0"], out, names=["base"], quiet=True)
    assert not out.exists() and not (tmp_path / "refused.partial").exists()


def test_audit_compares_two_hugging_face_folders_on_sciqa_smoke(tmp_path):
    from mitigate.policies.hf import build_tiny_checkpoint

    a = build_tiny_checkpoint(tmp_path / "a", "qwen3")
    b = build_tiny_checkpoint(tmp_path / "b", "qwen3", seed=1)
    with pytest.raises(C.ConfigError, match="records no task"):
        audit(a, [b], tmp_path / "x", quiet=True)
    got = audit(a, [b], tmp_path / "sciqa", names=["other_init"], preset="sciqa-smoke",
                overrides=["eval.samples=4"], quiet=True)
    assert got["methods"]["other_init"]["id"]["pass_at_k"].keys() == {"1", "2", "4"}
    assert got["checkpoints"] == {"base": str(a), "other_init": str(b)}
    assert "other_init against the base" in got["verdicts"]["other_init"]


def test_cli_audit_prints_verdicts_draws_figures_and_exits_2_on_bad_input(compared, smoke_base, tmp_path, capsys):
    from mitigate import cli

    out = tmp_path / "cli"
    assert cli.main(["audit", "--base", str(smoke_base), "--model", str(compared / "sdsd-seed0"), "--name", "sdsd",
                     "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "sdsd against the base: pass@1" in printed
    assert all((out / f).is_file() for f in ("audit.json", "audit.md", "pass_at_k.png", "diversity.pdf"))
    for argv, words in (
        (["--model", str(tmp_path / "nope")], "does not exist"),
        (["--model", str(compared / "sdsd-seed0"), "--k", "64"], "--k 64 is outside"),
        (["--model", str(compared / "sdsd-seed0"), "--samples", "0"], "--samples must be >= 1"),
    ):
        bad = tmp_path / "bad"
        assert cli.main(["audit", "--base", str(smoke_base), *argv, "--out", str(bad), "--quiet"]) == 2
        assert words in capsys.readouterr().err
        assert not bad.exists() and not (tmp_path / "bad.partial").exists()
