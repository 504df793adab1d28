"""The I/O leaf never deletes what it did not create, never writes over a command's inputs, cleans
up after killed runs and follows the user's umask; the CLI turns its refusals into exit status 2."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from mitigate import cli
from mitigate.core.io import MARKER, OutputError, atomic_path, run_folder, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_run_folder_is_atomic_and_marked(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_folder(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert not out.exists() and os.listdir(tmp_path) == []
    with run_folder(out) as tmp:
        write_json(tmp / "a.json", {"a": 1})
    assert json.loads((out / "a.json").read_text()) == {"a": 1} and (out / MARKER).is_file()
    assert os.listdir(tmp_path) == ["run"]


def test_existing_folders_are_refused_unless_ours_and_overwrite(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("a user's notes")
    for overwrite in (False, True):  # not created by mitigate: refused even with overwrite
        with pytest.raises(OutputError):
            with run_folder(notes, overwrite=overwrite):
                pass
    assert (notes / "mine.txt").read_text() == "a user's notes"
    ours = tmp_path / "ours"
    with run_folder(ours) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(OutputError):
        with run_folder(ours):
            pass
    with run_folder(ours, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(os.listdir(ours)) == sorted([MARKER, "v2"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with run_folder(empty) as tmp:  # an empty folder holds nothing to lose
        (tmp / "x").write_text("x")
    assert (empty / "x").is_file()


def test_inputs_are_never_outputs(tmp_path):
    inp = tmp_path / "base"
    with run_folder(inp) as tmp:
        (tmp / "model").write_text("weights")
    for out in (inp, inp / "sub", tmp_path):  # equal, inside, containing
        with pytest.raises(OutputError, match="overlaps the input"):
            with run_folder(out, overwrite=True, inputs=[inp]):
                pass
    assert (inp / "model").read_text() == "weights"


def test_a_killed_runs_temporary_folder_is_removed_next_time(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / ".run.tmp-abc"
    stale.mkdir()
    (stale / ".owner").write_text(dead)
    alive = tmp_path / ".run.tmp-def"
    alive.mkdir()
    (alive / ".owner").write_text(str(os.getppid()))  # a live process: reported, kept
    with run_folder(tmp_path / "run") as tmp:
        (tmp / "x").write_text("x")
    assert not stale.exists() and alive.exists()


def test_files_and_folders_follow_the_umask(tmp_path, umask_022):
    with run_folder(tmp_path / "run") as tmp:
        write_json(tmp / "a.json", {})
        with atomic_path(tmp / "fig.png") as f:
            f.write_bytes(b"png")
    assert mode(tmp_path / "run") == 0o755
    assert mode(tmp_path / "run" / "a.json") == 0o644
    assert mode(tmp_path / "run" / "fig.png") == 0o644


def test_cli_output_permissions_follow_the_umask(tmp_path, umask_022):
    out = tmp_path / "theory"
    assert cli.main(["theory", "--out", str(out), "--quiet"]) == 0
    assert mode(out) == 0o755
    for f in out.iterdir():
        assert mode(f) == 0o644, f


# ----------------------------------------------------------------------------- through the CLI

def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_commands_refuse_existing_outputs_and_their_inputs(tmp_path, smoke_base, capsys):
    base = smoke_base
    before = snapshot(base)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.md").write_text("keep me")
    summary = tmp_path / "summary"
    summary.mkdir()
    (summary / "summary.json").write_text("{}")
    smoke = ["--preset", "smoke", "--quiet"]
    cases = [
        ["train", *smoke, "--init", str(base), "--out", str(notes)],
        ["train", *smoke, "--init", str(base), "--out", str(base), "--overwrite"],
        ["train", *smoke, "--init", str(base), "--out", str(base / "checkpoint" / "inner")],
        ["reproduce", *smoke, "--out", str(notes)],
        ["reproduce", *smoke, "--out", str(notes), "--overwrite"],
        ["reproduce", *smoke, "--base", str(base), "--out", str(base), "--overwrite"],
        ["eval", "--ckpt", str(base), "--out", str(notes)],
        ["eval", "--ckpt", str(base), "--out", str(notes / "todo.md")],
        ["eval", "--ckpt", str(base), "--out", str(base / "checkpoint" / "mitigate.json"), "--overwrite"],
        ["table", str(summary), "--out", str(notes)],
        ["table", str(summary), "--out", str(notes), "--overwrite"],
        ["table", str(summary), "--out", str(summary), "--overwrite"],
        ["pretrain", *smoke, "--out", str(notes)],
        ["theory", "--out", str(notes)],
    ]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        reasons = ("exists", "overlaps", "not created by mitigate")
        assert "error:" in err and any(reason in err for reason in reasons), (argv, err)
    assert (notes / "todo.md").read_text() == "keep me" and os.listdir(notes) == ["todo.md"]
    assert (summary / "summary.json").read_text() == "{}"
    assert snapshot(base) == before
    assert sorted(os.listdir(tmp_path)) == ["notes", "summary"]  # nothing half-written beside them
