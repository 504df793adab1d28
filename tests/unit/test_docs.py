"""docs/extending.md works as written: every snippet runs, in order, in an empty folder.

Python and YAML blocks are written to the file named on their first line (`# duplicates.py`);
`mitigate ...` lines run through the CLI in-process and must exit 0; `python FILE` lines run the
file; the TOML block is loaded as entry points of the `mitigate.plugins` group."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from importlib import metadata
from pathlib import Path

import tomllib

from analysis.__main__ import main as analysis_main
from mitigate import cli, plugins

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str]]:
    return BLOCK.findall(DOC.read_text())


def test_the_page_has_one_snippet_of_each_kind():
    names = [body.splitlines()[0] for lang, body in blocks() if lang in ("python", "yaml")]
    for expected in ("# duplicates.py", "# raft.py", "# offsets.py", "# bigram.py", "# my_sweep.yaml"):
        assert expected in names


def test_every_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    for lang, body in blocks():
        first = body.splitlines()[0]
        if lang in ("python", "yaml"):
            name = first.removeprefix("# ").strip()
            (tmp_path / name).write_text(body)
        elif lang == "bash":
            for line in filter(None, (x.strip() for x in body.splitlines())):
                argv = shlex.split(line)
                if argv[0] == "mitigate":
                    assert cli.main(argv[1:]) == 0, (line, capsys.readouterr().err)
                elif argv[0] == "mitigate-analysis":  # the installed entry point of analysis/__main__.py
                    assert analysis_main(argv[1:]) == 0, (line, capsys.readouterr().err)
                elif argv[0] == "python":
                    runpy.run_path(argv[1], run_name="__main__")
                else:
                    raise AssertionError(f"unknown command in docs: {line}")
                ran.append(argv[1] if argv[0] == "mitigate" else argv[1])
        elif lang == "toml":
            entry_points(tomllib.loads(body), tmp_path, monkeypatch)
            ran.append("entry points")
        else:
            raise AssertionError(f"snippet in an unknown language: {lang}")
    assert ran.count("pretrain") == 3 and ran.count("train") == 5 and "reproduce" in ran and ran.count("eval") == 2
    assert "figures" in ran and (tmp_path / "runs/my_sweep/pass_at_k.png").is_file()
    assert '"pass_at_k"' in (tmp_path / "runs/sdsd-dup3-eval.json").read_text()
    assert "entry points" in ran and "ablation.py" in ran
    # the commands did what the page says
    assert "duplicates/loss" in (tmp_path / "runs/sdsd-dup/metrics.jsonl").read_text()
    assert "coef: 0.3" in (tmp_path / "runs/sdsd-dup3/config.yaml").read_text()
    assert '"unseen"' in (tmp_path / "runs/offsets-sdsd.json").read_text()
    summary = (tmp_path / "runs/my_sweep/summary.json").read_text()
    assert all(f'"{m}"' in summary for m in ("sdsd", "dup_01", "dup_03", "raft"))
    printed = capsys.readouterr().out
    assert re.search(r"^0\.1 \d", printed, re.M) and re.search(r"^0\.3 \d", printed, re.M)


def entry_points(pyproject: dict, folder: Path, monkeypatch) -> None:
    """Install the page's entry points for a package written here, and load them as mitigate does."""
    group = pyproject["project"]["entry-points"]
    assert list(group) == [plugins.ENTRY_POINT_GROUP]
    (folder / "my_package").mkdir()
    (folder / "my_package" / "__init__.py").write_text("")
    (folder / "my_package" / "terms.py").write_text(
        "LOADED = True\n")
    eps = [metadata.EntryPoint(name, value, plugins.ENTRY_POINT_GROUP) for name, value in
           group[plugins.ENTRY_POINT_GROUP].items()]
    monkeypatch.setattr(plugins.metadata, "entry_points",
                        lambda group: eps if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)
    plugins.load_entry_points()
    assert sys.modules["my_package.terms"].LOADED
