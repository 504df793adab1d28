"""Shared by the bad-input tests: a smoke command line, and a train run stopped mid-way."""

from __future__ import annotations

import pytest

from mitigate import cli
from mitigate.core import resume as R


def smoke(command: str, out, *sets, extra=()) -> list[str]:
    argv = [command, "--preset", "smoke", "--out", str(out), "--quiet", *extra]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.fixture
def stopped_run(smoke_base, tmp_path, monkeypatch):
    """(argv, work folder) of a train run stopped at step 3 with a resume checkpoint at step 2."""
    def stop(where, step):
        if (where, step) == ("train", 3):
            raise KeyboardInterrupt

    monkeypatch.setattr(R, "fault_point", stop)
    argv = smoke("train", tmp_path / "run", "train.steps=4", "train.save_every=2", extra=["--init", str(smoke_base)])
    assert cli.main(argv) == 130
    monkeypatch.setattr(R, "fault_point", lambda *a: None)
    return argv, tmp_path / "run.partial"
