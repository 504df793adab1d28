"""The numbers the READMEs cite equal their runs: every generated block
(`<!-- mitigate:table KIND SUMMARY_JSON [opts] -->` ... `<!-- /mitigate:table -->`, see
analysis/readme.py) of README.md, baselines/README.md and any other tracked Markdown file is what
`python -m analysis readme` generates from the summary it names. A failure prints the diff; the
fix is `python -m analysis readme FILE.md` (after checking that the new numbers are meant)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from analysis import readme as R
from analysis.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
NAMED = [ROOT / "README.md", ROOT / "baselines" / "README.md"]
SKIP = {"node_modules", "__pycache__"}  # and hidden folders (.venv, .git), and the top-level runs/ (outputs)


def markdown_with_blocks() -> list[Path]:
    """NAMED, and every other Markdown file of the repository that holds a generated block."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = sorted(d for d in dirs if not (d in SKIP or d.startswith(".") or (top and d == "runs")))
        for name in sorted(f for f in files if f.endswith(".md")):
            p = Path(folder) / name
            if p not in NAMED and R.blocks(p.read_text(errors="replace")):
                found.append(p)
    return [p for p in NAMED if p.is_file()] + found


@pytest.mark.parametrize("path", markdown_with_blocks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_tables_equal_their_summaries(path, capsys):
    rc = main(["readme", "--check", str(path)])
    assert rc == 0, capsys.readouterr().out[-6000:]


def test_the_named_readmes_exist():
    assert all(p.is_file() for p in NAMED)
