"""docs/integrations.md works as written: every snippet runs, in order, in an empty folder (Python
blocks written to the file named on their first line; `python FILE` runs it; `mitigate ...` runs
through the CLI in-process and must exit 0)."""

from __future__ import annotations

import json
import re
import runpy
import shlex
from pathlib import Path

import pytest

pytest.importorskip("trl")  # the bench extra; `make test` installs it

from mitigate import cli  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def test_every_snippet_of_the_integrations_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", DOC.read_text(), re.S):
        if lang == "python":
            (tmp_path / body.splitlines()[0].removeprefix("# ").strip()).write_text(body)
            continue
        assert lang == "bash", lang
        for line in filter(None, (x.strip() for x in body.splitlines())):
            argv = shlex.split(line)
            if argv[0] == "python":
                runpy.run_path(argv[1], run_name="__main__")
            elif argv[0] == "mitigate":
                assert cli.main(argv[1:]) == 0, (line, capsys.readouterr().err)
            else:
                raise AssertionError(f"unknown command in docs: {line}")
            ran.append(argv[1])
    assert ran == ["train_with_monitor.py", "save_base.py", "audit"]
    printed = capsys.readouterr().out
    assert "'collapse/pass@1'" in printed and "grpo_trl against the base" in printed
    audit = json.loads((tmp_path / "runs/audit-trl/audit.json").read_text())
    assert set(audit["methods"]) == {"base", "grpo_trl"} and (tmp_path / "runs/audit-trl/diversity.png").is_file()
