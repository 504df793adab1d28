"""`mitigate sweep` on a tiny smoke-sized grid: cells are run folders, a re-run trains nothing and
writes the same summary, a half-finished cell (killed before its evaluation) is the only one
trained again and the result equals the uninterrupted sweep, --print-commands lists one command
per cell, and bad input exits 2 with nothing written."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from mitigate import cli
from mitigate.recipes import sweep as S

GRID = """\
preset: smoke
train: {steps: 1, probe_prompts: 2, probe_samples: 2}
eval: {samples: 4, max_prompts: 3, id_split: id_val}
reproduce:
  n_boot: 100
  seeds: [0]
  methods: [base, ent_0.01, ent_0.1]
  method_configs:
    ent_0.01: {train.objective: {name: sdsd}, train.regularizers: [{name: entropy, coef: 0.01}]}
    ent_0.1: {train.objective: {name: sdsd}, train.regularizers: [{name: entropy, coef: 0.1}]}
"""
CELLS = ["ent_0.01-seed0", "ent_0.1-seed0"]


def without_wall_clock(tree):
    """Wall-clock fields (training time) differ between any two runs; everything else must not."""
    if isinstance(tree, dict):
        return {k: without_wall_clock(v) for k, v in tree.items() if k != "wall_seconds"}
    if isinstance(tree, list):
        return [without_wall_clock(v) for v in tree]
    return tree


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "grid.yaml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def swept(grid, smoke_base, tmp_path_factory):
    """The uninterrupted sweep, run in this process (--jobs 1)."""
    out = tmp_path_factory.mktemp("swept") / "out"
    res = S.sweep(S.C.load(grid), out, base=smoke_base, jobs=1, quiet=True, config_path=str(grid))
    assert res["trained"] == CELLS and res["skipped"] == []
    return out


def test_cells_are_run_folders_and_the_summary_has_a_sweep_block(swept):
    for cell in CELLS:
        for name in ("config.yaml", "metrics.jsonl", "budget.json", "eval.json", "checkpoint/model.safetensors"):
            assert (swept / cell / name).is_file(), (cell, name)
    assert (swept / "base" / "eval.json").is_file() and (swept / "config.yaml").is_file()
    s = json.loads((swept / "summary.json").read_text())
    assert list(s["methods"]) == ["base", "ent_0.01", "ent_0.1"] and s["id_split"] == "id_val"
    assert s["sweep"]["varying"] == {"ent_0.01": {"train.regularizers.0.coef": 0.01},
                                     "ent_0.1": {"train.regularizers.0.coef": 0.1}}
    assert s["methods"]["ent_0.1"]["budget"]["rollouts"] > 0 and "ranking" in s
    assert "## Sweep" in (swept / "summary.md").read_text()


def test_rerun_trains_nothing_and_writes_the_same_summary(swept, grid, smoke_base, capsys):
    before = (swept / "summary.json").read_bytes(), (swept / "summary.md").read_bytes()
    argv = ["sweep", str(grid), "--base", str(smoke_base), "--out", str(swept), "--quiet"]
    assert cli.main(argv) == 0
    assert "0 cell(s) trained, 2 already done" in capsys.readouterr().out
    assert ((swept / "summary.json").read_bytes(), (swept / "summary.md").read_bytes()) == before


def test_killed_sweep_finishes_only_the_missing_cell(swept, grid, smoke_base, tmp_path):
    """A copy of the sweep as a kill leaves it: one cell trained but not evaluated (no eval.json),
    the tables not written. The re-run trains that cell alone and ends where the uninterrupted
    sweep ended (wall-clock fields aside)."""
    out = tmp_path / "killed"
    shutil.copytree(swept, out)
    (out / CELLS[1] / "eval.json").unlink()
    (out / "summary.json").unlink()
    (out / "summary.md").unlink()
    res = S.sweep(S.C.load(grid), out, base=smoke_base, jobs=1, quiet=True, config_path=str(grid))
    assert res["trained"] == [CELLS[1]] and res["skipped"] == [CELLS[0]]
    assert without_wall_clock(json.loads((out / "summary.json").read_text())) == \
        without_wall_clock(json.loads((swept / "summary.json").read_text()))


def table_bodies(folder, out):
    """The LaTeX and Markdown tables `python -m analysis tables` writes for a sweep folder, without
    their header comments (command, folder, hash) and without the budget table (wall seconds)."""
    from analysis.__main__ import main as analysis_main

    assert analysis_main(["tables", str(folder), "--out", str(out)]) == 0
    return {p.name: [ln for ln in p.read_text().splitlines() if not ln.startswith(("%", "<!--"))]
            for p in sorted(out.iterdir()) if "-budget" not in p.name}


def test_sweep_killed_by_sigkill_resumes_to_the_same_tables(swept, grid, smoke_base, tmp_path):
    """A real kill: the sweep process SIGKILLs itself after training the second cell, before
    evaluating it (MITIGATE_FAULT=sweep:CELL). The re-run trains that cell alone, and the summary and
    every table equal the uninterrupted sweep's."""
    out = tmp_path / "killed" / "out"
    env = {**os.environ, "MITIGATE_FAULT": f"sweep:{CELLS[1]}"}
    proc = subprocess.run([sys.executable, "-m", "mitigate.cli", "sweep", str(grid), "--base", str(smoke_base),
                           "--out", str(out), "--jobs", "1", "--quiet"], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / CELLS[0] / "eval.json").is_file() and not (out / CELLS[1] / "eval.json").exists()
    assert not (out / "summary.json").exists()
    res = S.sweep(S.C.load(grid), out, base=smoke_base, jobs=1, quiet=True, config_path=str(grid))
    assert res["trained"] == [CELLS[1]] and res["skipped"] == [CELLS[0]]
    assert without_wall_clock(json.loads((out / "summary.json").read_text())) == \
        without_wall_clock(json.loads((swept / "summary.json").read_text()))
    resumed, uninterrupted = table_bodies(out, tmp_path / "t1"), table_bodies(swept, tmp_path / "t2")
    assert len(resumed) >= 6 and resumed == uninterrupted


def test_print_commands_one_per_cell(swept, grid, smoke_base, tmp_path, capsys):
    out = tmp_path / "cluster"
    assert cli.main(["sweep", str(grid), "--base", str(smoke_base), "--out", str(out), "--print-commands"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("#")]
    assert not out.exists()  # printing writes nothing
    cells = [shlex.split(ln)[shlex.split(ln).index("--cell") + 1] for ln in lines if "--cell" in ln]
    assert cells == ["base", *CELLS]
    assert all(shlex.split(ln)[:2] == ["mitigate", "sweep"] and "--base" in ln for ln in lines)
    assert "--cell" not in lines[-1]  # the last command writes the tables
    # a printed cell command runs that cell alone (here: the base evaluation, no training)
    base_cmd = shlex.split(lines[0])[1:] + ["--quiet"]
    assert cli.main(base_cmd) == 0
    assert (out / "base" / "eval.json").is_file() and not any((out / c).exists() for c in CELLS)
    assert not (out / "summary.json").exists()


def test_bad_input_exits_2_and_writes_nothing(grid, smoke_base, tmp_path, capsys):
    out = tmp_path / "bad"
    base = ["sweep", str(grid), "--base", str(smoke_base), "--out", str(out), "--quiet"]
    assert cli.main([*base, "--cell", "nope-seed0"]) == 2
    assert "unknown cell(s) nope-seed0" in capsys.readouterr().err
    assert cli.main([*base, "--jobs", "0"]) == 2
    assert cli.main(["sweep", str(grid), "--base", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad_grid = tmp_path / "bad.yaml"
    bad_grid.write_text(GRID.replace("ent_0.1]", "ent_0.1, nosuch]"))
    assert cli.main(["sweep", str(bad_grid), "--base", str(smoke_base), "--out", str(out)]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err
    assert not out.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(["sweep", str(grid), "--base", str(smoke_base), "--out", str(other)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_changed_settings_are_refused_on_resume(swept, grid, smoke_base, tmp_path, capsys):
    out = tmp_path / "changed"
    shutil.copytree(swept, out)
    changed = tmp_path / "changed.yaml"
    changed.write_text(GRID.replace("coef: 0.1}", "coef: 0.2}"))
    assert cli.main(["sweep", str(changed), "--base", str(smoke_base), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ent_0.1-seed0" in err and "--overwrite" in err


@pytest.mark.slow
def test_process_pool_gives_the_same_cells(swept, grid, smoke_base, tmp_path):
    """Two worker processes (spawned; one torch thread per cell, as in this process)."""
    out = tmp_path / "pool"
    res = S.sweep(S.C.load(grid), out, base=smoke_base, jobs=2, quiet=True, config_path=str(grid))
    assert sorted(res["trained"]) == CELLS
    assert without_wall_clock(json.loads((out / "summary.json").read_text())) == \
        without_wall_clock(json.loads((swept / "summary.json").read_text()))
