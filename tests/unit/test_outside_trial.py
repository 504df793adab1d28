"""What an outside trial found (issue 29), each through the CLI: outputs that follow the umask
(weights included), records that match what ran, mixed evaluations refused, messages where there
were tracebacks, bounded settings, strict JSON, and messages whose advice can be followed. Every
refusal exits 2 (130 for Ctrl-C) with a message naming the problem, and writes nothing. The table
of cases is docs/robustness.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mitigate import cli
from mitigate.core.guard import nonfinite_message
from mitigate.core.io import nan_for_null, write_json
from tests.unit.conftest import smoke

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "smoke_summary_reference.json"


def run_err(capsys, argv: list[str], code: int = 2) -> str:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == code, captured
    assert f"mitigate {argv[0]}: " in captured.err and "Traceback" not in captured.err
    return captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ckpt_copy(smoke_base, tmp_path):
    """A writable copy of the smoke base checkpoint, to damage."""
    dst = tmp_path / "base"
    shutil.copytree(smoke_base, dst)
    return dst / "checkpoint"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------- permissions

def test_every_written_file_follows_the_umask_weights_included(capsys, umask_022, stopped_run):
    argv, work = stopped_run  # a resume checkpoint, written under umask 022
    for path in (work / "checkpoints").rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
    assert cli.main([*argv, "--resume"]) == 0
    out = work.with_name("run")
    assert mode(out) == 0o755 and (out / "checkpoint" / "model.safetensors").is_file()
    for path in out.rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


# ----------------------------------------------------------------------------- records that match what ran

@pytest.mark.parametrize("override,shown", [("model.n_embd=64", "model.n_embd: 32 -> 64"),
                                            ("model.n_layer=2", "model.n_layer: 1 -> 2"),
                                            ("model.dropout=0.1", "model.dropout: 0.0 -> 0.1"),
                                            ("task.n_concepts=6", "task.n_concepts: 5 -> 6")])
def test_eval_refuses_what_the_checkpoint_decides(capsys, smoke_base, tmp_path, override, shown):
    err = run_err(capsys, ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"), "--set", override])
    assert "change the task or model that the checkpoint" in err and shown in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("override,words", [("train.lr=0.5", "train.lr would change nothing"),
                                            ("pretrain.steps=5", "pretrain.steps would change nothing"),
                                            ("seed=3", "the sampling seed is --seed")])
def test_eval_refuses_settings_it_does_not_use(capsys, smoke_base, tmp_path, override, words):
    err = one_line(run_err(capsys, ["eval", "--ckpt", str(smoke_base), "--out", str(tmp_path / "e.json"),
                                    "--set", override]))
    assert "applies only eval.* and device overrides" in err and words in err
    assert os.listdir(tmp_path) == []


def test_a_base_for_reproduce_decides_the_model(capsys, smoke_base, tmp_path):
    err = run_err(capsys, smoke("reproduce", tmp_path / "out", "model.n_embd=64", "reproduce.methods=[grpo]",
                                extra=["--base", str(smoke_base)]))
    assert "model.n_embd: 32 -> 64" in err and "drop these task.* / model.* overrides" in err
    assert os.listdir(tmp_path) == []


def test_a_method_of_reproduce_or_sweep_cannot_change_the_shared_base(capsys, tmp_path):
    sets = ["reproduce.methods=[wide]", "reproduce.method_configs={wide: {train.objective: {name: grpo}, "
                                        "model.n_embd: 64}}"]
    grid = tmp_path / "grid.yaml"
    grid.write_text("preset: smoke\nreproduce:\n  seeds: [0]\n")
    as_flags = [a for s in sets for a in ("--set", s)]
    for argv in (smoke("reproduce", tmp_path / "out", *sets),
                 ["sweep", str(grid), "--out", str(tmp_path / "out"), "--quiet", *as_flags]):
        err = one_line(run_err(capsys, argv))
        assert "reproduce.method_configs.wide changes what the shared base model decides" in err
        assert "model.n_embd: 32 -> 64" in err
    assert os.listdir(tmp_path) == ["grid.yaml"]


def test_train_refuses_what_the_checkpoint_decides(capsys, smoke_base, tmp_path):
    err = run_err(capsys, smoke("train", tmp_path / "out", "model.n_embd=64", extra=["--init", str(smoke_base)]))
    assert "model.n_embd: 32 -> 64" in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- mitigate table over unlike evaluations

def drop_pass_at(tree, k: str):
    """`tree` without pass@k (a summary evaluated with fewer samples has no such column)."""
    if isinstance(tree, dict):
        return {key: drop_pass_at(v, k) for key, v in tree.items() if not (key == k and "1" in tree)}
    if isinstance(tree, list):
        return [drop_pass_at(v, k) for v in tree]
    return tree


def summary_folder(root: Path, name: str, method: str, samples: int, temperature: float = 1.0,
                   task_seed: int = 0) -> Path:
    """A run folder holding one method of the smoke reference summary, as if evaluated with n =
    `samples` (its columns above n removed) at `temperature`."""
    ref = json.loads(FIXTURE.read_text())
    entry = ref["methods"][method]
    for k in ("8", "4"):
        if int(k) > samples:
            entry = drop_pass_at(entry, k)
    summary = {"preset": "smoke", "wall_seconds": 1.0, "id_split": "id_test", "diversity_r": ref["diversity_r"],
               "methods": {method: entry}, "budget": {**ref["budget"], "eval_samples": samples}}
    folder = root / name
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(f"eval:\n  samples: {samples}\n  temperature: {temperature}\n"
                                        f"  batch_size: 64\ntask:\n  name: graph\n  seed: {task_seed}\n")
    return folder


def test_table_refuses_summaries_evaluated_differently(capsys, tmp_path):
    a = summary_folder(tmp_path, "n8", "grpo", 8)
    b = summary_folder(tmp_path, "n4", "sdsd", 4)
    for first, second in ((a, b), (b, a)):  # both orders: one dropped columns, the other ended in KeyError
        err = one_line(run_err(capsys, ["table", str(first), str(second), "--out", str(tmp_path / "t")]))
        assert "evaluated with different settings" in err and "eval.samples" in err
        assert str(a) in err and str(b) in err and "--shared-only" in err
    c = summary_folder(tmp_path, "t07", "sdsd_cmi", 8, temperature=0.7)
    err = run_err(capsys, ["table", str(a), str(c), "--out", str(tmp_path / "t")])
    assert "eval.temperature: 1.0 in" in err and "eval.samples" not in err and "batch_size" not in err
    d = summary_folder(tmp_path, "task1", "sdsd_marginal", 8, task_seed=1)
    err = run_err(capsys, ["table", str(a), str(d), "--out", str(tmp_path / "t")])
    assert "task.seed: 0 in" in err and "pooled with --pool-tasks" in err
    assert sorted(os.listdir(tmp_path)) == ["n4", "n8", "t07", "task1"]


def test_table_shared_only_shows_what_every_summary_reports(capsys, tmp_path):
    a = summary_folder(tmp_path, "n8", "grpo", 8)
    b = summary_folder(tmp_path, "n4", "sdsd", 4)
    for i, (first, second) in enumerate(((a, b), (b, a))):
        out = tmp_path / f"t{i}"
        assert cli.main(["table", str(first), str(second), "--out", str(out), "--shared-only"]) == 0
        merged = json.loads((out / "summary.json").read_text())
        for m in merged["methods"].values():
            for tree in (m, m["ci95"], *m["paired"].values(), *m["per_seed"]):
                assert sorted(tree["id"]["pass_at_k"]) == ["1", "2", "4"]
        assert merged["evaluation_by_source"] == {str(a): {"eval.samples": 8}, str(b): {"eval.samples": 4}}
        md = (out / "summary.md").read_text()
        assert "evaluated with different settings" in md and "eval.samples = 4" in md and "n = 4." not in md
    capsys.readouterr()


def test_table_given_a_file_that_is_not_a_summary(capsys, tmp_path):
    text = tmp_path / "notes.md"
    text.write_text("# notes\n")
    err = one_line(run_err(capsys, ["table", str(text), "--out", str(tmp_path / "t")]))
    assert "notes.md' is not valid JSON" in err
    other = tmp_path / "eval.json"
    other.write_text(json.dumps({"id": {}, "ood": {}}))
    err = one_line(run_err(capsys, ["table", str(other), "--out", str(tmp_path / "t")]))
    assert "is not a summary" in err and "give reproduce or sweep output folders" in err
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "notes.md"]


# ----------------------------------------------------------------------------- plugins that do not import

@pytest.mark.parametrize("source,words", [
    ("def broken(:\n    pass\n", ["syntax error in", "line 1"]),
    ("raise RuntimeError('no GPU library here')\n", ["raised RuntimeError: no GPU library here", "line 1"]),
    ("from mitigate.objectives import register_objective\n\n"
     "@register_objective('grpo')\ndef mine(batch, ctx, cfg):\n    pass\n",
     ["objective 'grpo' is already registered", "must pick another name"]),
])
def test_a_plugin_that_does_not_import(capsys, tmp_path, source, words):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(source)
    err = one_line(run_err(capsys, smoke("pretrain", tmp_path / "out", extra=["--import", str(plugin)])))
    assert "--import" in err and all(w in err for w in words), err
    assert os.listdir(tmp_path) == ["plugin.py"]


@pytest.mark.parametrize("spec", ["", ".", "  "])
def test_an_import_that_names_nothing(capsys, tmp_path, spec):
    err = one_line(run_err(capsys, smoke("pretrain", tmp_path / "out", extra=["--import", spec])))
    assert "--import needs a module name" in err
    assert os.listdir(tmp_path) == []


def test_theory_sdsd_runs_are_checked(capsys, smoke_base, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    err = one_line(run_err(capsys, ["theory", "--out", str(tmp_path / "t"), "--quiet", "--sdsd", str(smoke_base)]))
    assert "--sdsd needs --ckpt BASE" in err
    err = one_line(run_err(capsys, ["theory", "--out", str(tmp_path / "t"), "--quiet", "--ckpt", str(smoke_base),
                                    "--sdsd", str(a_file)]))
    assert "no checkpoint in" in err and "notes.txt" in err
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_evaluating_a_plugin_run_without_its_import(capsys, ckpt_copy, tmp_path):
    meta = json.loads((ckpt_copy / "mitigate.json").read_text())
    meta["config"]["train"]["regularizers"] = [{"name": "my_plugin_term", "coef": 0.1}]
    (ckpt_copy / "mitigate.json").write_text(json.dumps(meta))
    err = run_err(capsys, ["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")])
    assert "unknown regularizer 'my_plugin_term'" in err and "pass the same --import" in err
    assert sorted(os.listdir(tmp_path)) == ["base"]


# ----------------------------------------------------------------------------- weights, numbers, names, Ctrl-C

def test_weights_that_are_all_nan(capsys, ckpt_copy, tmp_path):
    weights = ckpt_copy / "model.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(weights).items()}, weights)
    for argv in (["eval", "--ckpt", str(ckpt_copy), "--out", str(tmp_path / "e.json")],
                 smoke("train", tmp_path / "out", extra=["--init", str(ckpt_copy)])):
        err = one_line(run_err(capsys, argv))
        assert "are not finite" in err and "NaN" in err and "diverged run" in err
    assert sorted(os.listdir(tmp_path)) == ["base"]


@pytest.mark.parametrize("value,words", [("1" * 5000, "5000 digits"), ("1" * 30, "at most 18 digits")])
def test_a_number_of_thousands_of_digits(capsys, tmp_path, value, words):
    err = one_line(run_err(capsys, smoke("pretrain", tmp_path / "out", f"train.steps={value}")))
    assert "train.steps" in err and words in err and len(err) < 400
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["pretrain", "eval", "table", "sweep"])
def test_an_out_name_too_long_for_the_file_system(capsys, smoke_base, tmp_path, command):
    out = tmp_path / ("r" * 300)
    grid = Path(__file__).resolve().parents[2] / "baselines" / "ablations" / "entropy.yaml"
    argv = {"pretrain": smoke("pretrain", out), "eval": ["eval", "--ckpt", str(smoke_base), "--out", str(out)],
            "table": ["table", str(smoke_base), "--out", str(out)],
            "sweep": ["sweep", str(grid), "--preset", "smoke", "--out", str(out), "--quiet"]}[command]
    err = one_line(run_err(capsys, argv))
    assert "is too long" in err and "pick a shorter --out" in err
    assert os.listdir(tmp_path) == []


def test_sweep_out_that_is_a_file(capsys, tmp_path):
    grid = Path(__file__).resolve().parents[2] / "baselines" / "ablations" / "entropy.yaml"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    err = one_line(run_err(capsys, ["sweep", str(grid), "--preset", "smoke", "--out", str(a_file), "--quiet"]))
    assert "is a file" in err
    assert os.listdir(tmp_path) == ["notes.txt"] and a_file.read_text() == "keep"


def test_ctrl_c_during_start_up(capsys, tmp_path, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_early_checks", interrupted)
    err = one_line(run_err(capsys, smoke("pretrain", tmp_path / "out"), code=130))
    assert "interrupted" in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- settings that size memory

@pytest.mark.parametrize("sets,words", [
    (["train.steps=100000000000"], "'train.steps' must be <= 10000000"),
    (["train.steps=5000000", "train.prompts_per_step=64"], "prompt draws"),
    (["train.group_size=65536", "train.prompts_per_step=65536"], "rollouts per step"),
    (["eval.samples=1000000000"], "'eval.samples' must be <="),
    (["model.n_embd=100000000"], "'model.n_embd' must be <="),
    (["task.n_start=1000000000"], "'task.n_start' must be <="),
])
def test_settings_that_size_memory_are_bounded(capsys, smoke_base, tmp_path, sets, words):
    err = one_line(run_err(capsys, smoke("train", tmp_path / "out", *sets, extra=["--init", str(smoke_base)])))
    assert words in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stratum,words", [
    ("{hard: {low: abc}}", "need numbers 0 <= low < high <= 1"),
    ("{hard: {samples: 1000000000}}", "samples must be an integer >= 1 and <= 65536"),
])
def test_strata_settings_are_checked(capsys, tmp_path, stratum, words):
    err = one_line(run_err(capsys, smoke("reproduce", tmp_path / "out", f"reproduce.strata={stratum}")))
    assert words in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("alphas", ["[abc]", "[2.5]", "[0.5, 0.5]"])
def test_interpolation_weights_are_checked(capsys, tmp_path, alphas):
    err = one_line(run_err(capsys, smoke("reproduce", tmp_path / "out", f"reproduce.interpolation={alphas}")))
    assert "reproduce.interpolation must list distinct weights alpha in (0, 1)" in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- strict JSON

def test_json_records_are_strict_null_for_not_finite(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.5, float("inf"), -float("inf")], "z": None})
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data == {"x": None, "y": [1.5, None, None], "z": None}
    back = nan_for_null(data)
    assert back["x"] != back["x"] and back["y"][0] == 1.5


def test_eval_json_is_strict(capsys, smoke_base, tmp_path):
    out = tmp_path / "e.json"
    # r = 8 correct samples out of 2: the accuracy-free diversity is not defined (NaN) on every prompt
    assert cli.main(["eval", "--ckpt", str(smoke_base), "--out", str(out), "--samples", "2", "--quiet",
                     "--set", "eval.max_prompts=2", "--set", "eval.diversity_r=8"]) == 0
    text = out.read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in eval.json"))
    assert record["id"]["concepts_at_r"] is None
    capsys.readouterr()


# ----------------------------------------------------------------------------- messages whose advice can be followed

def test_the_nan_stop_gives_advice_that_can_be_followed():
    kept = nonfinite_message("train", 7, {"loss": float("nan")}, "6, in 'run.partial/checkpoints/step-000006'",
                             "train.on_nonfinite")
    assert "--resume --set train.on_nonfinite=skip" in kept and "--overwrite" in kept and "train.lr" in kept
    assert "(step 6, in 'run.partial" in kept
    assert not re.search(r"lower the learning rate, or", kept, re.I)  # a resume cannot change the learning rate
    none = nonfinite_message("pretrain", 3, {"loss": float("nan")}, None, "pretrain.on_nonfinite")
    assert "--resume" not in none and "lower pretrain.lr" in none and "pretrain.on_nonfinite=skip" in none


def test_resume_with_another_step_count_names_the_setting(capsys, stopped_run):
    argv, work = stopped_run
    capsys.readouterr()
    err = run_err(capsys, [*argv, "--resume", "--set", "train.steps=5"])
    assert "train.steps: 4 -> 5" in err and "prompt order changed" in err
    assert not re.search(r"[0-9a-f]{64}", err) and "(: " not in err
    assert (work / "checkpoints" / "step-000002").is_dir()


def test_config_that_is_a_folder(capsys, tmp_path):
    (tmp_path / "configs").mkdir()
    err = one_line(run_err(capsys, ["pretrain", "--config", str(tmp_path / "configs"), "--out", str(tmp_path / "o")]))
    assert "is a folder" in err and "not found" not in err
    assert os.listdir(tmp_path) == ["configs"]


def test_allowed_methods_are_listed_once(capsys, tmp_path):
    err = one_line(run_err(capsys, smoke("reproduce", tmp_path / "out", "reproduce.methods=[nope]",
                                         "reproduce.method_configs={grpo: {train.lr: 0.001}}")))
    allowed = err.split("allowed: ")[1].split(", ")
    assert "grpo" in allowed and len(allowed) == len(set(allowed))
    assert os.listdir(tmp_path) == []


def test_help_ends_with_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert cli.parser().description.endswith(".") and text.rstrip().endswith(".")
    assert "Parsing only: each" not in text
