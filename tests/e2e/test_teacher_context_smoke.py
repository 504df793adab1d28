"""Issue 26 on `sciqa-smoke` (CPU): every teacher context kind and the external teacher run end to end
through `mitigate reproduce` (two training steps each, one seed, a few samples) and report the
uncertainty-marker rate and response length beside the text diversity. The numbers mean nothing; the
GPU preset is where the claims are tested."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mitigate import cli
from mitigate.metrics.uncertainty import UNCERTAINTY_KEYS

ROWS = {
    "ctx_full": {"name": "sdsd"},
    "ctx_partial": {"name": "sdsd", "teacher_context": "partial", "context_tokens": 4},
    "ctx_answer": {"name": "sdsd", "teacher_context": "answer"},
    "ctx_answer_verdict": {"name": "sdsd_cmi", "M": 2, "teacher_context": "answer_verdict"},
    "ctx_none": {"name": "sdsd", "teacher_context": "none"},  # live teacher: the null
    # an external teacher: another architecture with the same tokenizer (a random tiny Llama), without and
    # with a demonstration
    "opd_external": {"name": "sdsd", "teacher": "external", "teacher_path": "tiny:llama", "teacher_context": "none"},
    "sdsd_external": {"name": "sdsd", "teacher": "external", "teacher_path": "tiny:llama"},
}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_context")
    assert cli.main(["pretrain", "--preset", "sciqa-smoke", "--out", str(root / "base"), "--quiet"]) == 0
    config = {"preset": "sciqa-smoke", "eval": {"samples": 4},
              "reproduce": {"methods": list(ROWS), "seeds": [0], "n_boot": 100,
                            "method_configs": {m: {"train.objective": o} for m, o in ROWS.items()}}}
    (root / "rows.yaml").write_text(yaml.safe_dump(config))
    out = root / "out"
    assert cli.main(["reproduce", "--config", str(root / "rows.yaml"), "--base", str(root / "base"), "--out", str(out),
                     "--quiet", "--jobs", "1"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def steps(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]


def test_every_row_reports_uncertainty_markers_and_length(reproduced):
    out, s = reproduced
    assert list(s["methods"]) == list(ROWS)
    for name, m in s["methods"].items():
        for block in [m["id"], *m["ood"].values()]:
            for key in UNCERTAINTY_KEYS:
                assert math.isfinite(block[key]) and block[key] >= 0, (name, key)
            assert 0 <= block["uncertainty_share"] <= 1 and block["response_tokens"] <= 24
            assert "lexical_vendi" in block  # beside the text diversity
        assert set(m["ci95"]["id"]) >= set(UNCERTAINTY_KEYS)
        rows = json.loads((out / f"{name}-seed0" / "eval.json").read_text())["per_prompt"]["id"]
        assert all(set(UNCERTAINTY_KEYS) <= set(r) for r in rows)
        assert len(steps(out / f"{name}-seed0")) == 2
    assert "uncertainty markers /100 words" in (out / "summary.md").read_text()  # a column of the main table


def test_contexts_and_teachers_as_configured(reproduced):
    out, s = reproduced
    assert all(r["masked_prompts"] == 1.0 for r in steps(out / "ctx_none-seed0"))  # the null: nothing to distil
    assert all(r["masked_prompts"] == 0.0 for r in steps(out / "opd_external-seed0"))  # every rollout a target
    for name in ("opd_external", "sdsd_external"):
        meta = json.loads((out / f"{name}-seed0" / "meta.json").read_text())
        record = meta["external_teacher"]
        assert record["path"] == "tiny:llama" and record["policy"] == "hf" and record["model"]["model_type"] == "llama"
        assert "model.safetensors" in record["files"]
        assert meta["config"]["train"]["objective"]["teacher_path"] == "tiny:llama"
    objectives = s["budget"]["objectives"]
    assert objectives["ctx_full"] == {k: v for k, v in objectives["ctx_full"].items()
                                      if k not in ("teacher_context", "teacher_path")}
    assert objectives["ctx_answer"]["teacher_context"] == "answer"
    # somewhere a demonstration was drawn, so the contexts above were built from one
    drawn = [r["masked_prompts"] for n in ("ctx_partial", "ctx_answer", "ctx_answer_verdict", "sdsd_external")
             for r in steps(out / f"{n}-seed0")]
    assert min(drawn) < 1.0
