"""Extension without editing the package: a task, a policy and a regularizer that live outside
`mitigate/` register themselves through `--import` and run through the normal CLI paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitigate import cli

HERE = Path(__file__).resolve().parent
PLUGIN = str(HERE / "toy_plugin.py")
TOY = ["--preset", "smoke", "--quiet", "--import", PLUGIN, "--set", "task={name: toy}",
       "--set", "train.steps=2", "--set", "train.prompts_per_step=2", "--set", "train.probe_prompts=2",
       "--set", "eval.max_prompts=0", "--set", "eval.samples=4", "--set", "pretrain.steps=20"]

REGULARIZER = '''
from dataclasses import dataclass

from mitigate.core.fields import Section, opt
from mitigate.ops import aggregate
from mitigate.regularizers import register_regularizer

CALLS = []


@dataclass
class LengthConfig(Section):
    name: str = opt("length", "registered regularizer name")
    coef: float = opt(0.1, "weight of the term", min=0.0)


@register_regularizer("length", LengthConfig)
def length(batch, ctx, cfg):
    """Penalise long rollouts (a score-function term on each rollout's length)."""
    CALLS.append(len(batch.tokens))
    n = batch.mask.sum(1)
    loss = aggregate((n - n.mean())[:, None] * batch.token_logprobs(), batch.mask, "token_mean")
    return loss, {"len": float(n.mean())}
'''


@pytest.mark.parametrize("policy", ["tiny_gpt", "toy_bigram"])
def test_toy_task_and_policy_pretrain_train_and_eval_through_the_cli(tmp_path, policy):
    model = ["--set", f"model={{name: {policy}}}"]
    if policy == "toy_bigram":  # a table of logits learns fast at a large step size
        model += ["--set", "pretrain.lr=0.3", "--set", "pretrain.steps=60"]
    base, run = tmp_path / "base", tmp_path / "run"
    assert cli.main(["pretrain", *TOY, *model, "--out", str(base)]) == 0
    meta = json.loads((base / "checkpoint" / "mitigate.json").read_text())
    assert meta["policy"] == policy and meta["task"]["name"] == "toy"
    for objective in ("grpo", "sdsd"):  # sdsd exercises the task's teacher context
        out = run.with_name(f"{run.name}-{objective}")
        assert cli.main(["train", *TOY, *model, "--set", f"train.objective={{name: {objective}}}",
                         "--init", str(base), "--out", str(out)]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2]
        assert 0.0 <= rows[-1]["reward"] <= 1.0
    res_file = tmp_path / "eval.json"
    assert cli.main(["eval", "--import", PLUGIN, "--ckpt", str(run.with_name(f"{run.name}-sdsd")),
                     "--out", str(res_file), "--samples", "8", "--quiet"]) == 0
    res = json.loads(res_file.read_text())
    assert set(res["ood"]) == {"late"}, "the task names its own OOD splits"
    assert res["id"]["n_prompts"] == 6 and res["ood"]["late"]["n_prompts"] == 2
    pk = res["id"]["pass_at_k"]
    assert list(pk) == ["1", "2", "4", "8"] and 0.0 <= pk["1"] <= pk["8"] <= 1.0
    if policy == "toy_bigram":  # pretraining learnt the toy task
        assert pk["1"] > 0.5, res["id"]


def test_a_regularizer_from_a_file_is_used_with_import(tmp_path, smoke_base):
    plugin = tmp_path / "my_terms.py"
    plugin.write_text(REGULARIZER)
    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "smoke", "--quiet", "--import", str(plugin), "--init", str(smoke_base),
                     "--set", "train.objective={name: sdsd}",
                     "--set", "train.regularizers=[{name: length, coef: 0.5}]", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("length/len" in r and "length/loss" in r for r in rows[1:])
    assert "coef: 0.5" in (out / "config.yaml").read_text()


def test_an_unknown_name_lists_the_registered_ones(tmp_path, capsys):
    assert cli.main(["pretrain", "--preset", "smoke", "--set", "task={name: toi}", "--out", str(tmp_path / "x"),
                     "--import", PLUGIN]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'toi'" in err and "did you mean 'toy'" in err and "graph" in err
    assert cli.main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "x"),
                     "--import", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
