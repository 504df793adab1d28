"""Every command line of README.md and docs/extending.md runs as written from a fresh shell in a
temporary clone of the repository, except the lines marked `long` (real-scale reproductions).

Each page runs as one `bash` script in its own `git clone` of this repository (the committed
files: `baselines/*.yaml`, the READMEs the tables are checked against), with this checkout's
`.venv/bin` first on PATH and nothing else from the shell's profile. Command blocks are fenced
blocks without a language or marked bash/sh; their lines run in order, continuation lines joined,
comment lines skipped, and a line whose trailing comment ends in the word `long` is skipped (the
reader's cue that it runs for minutes to hours, or needs GPUs). Python and YAML blocks whose first
line names a file (`# duplicates.py`) are written to that file before the commands after them, as
the page tells the reader to save them; other Python blocks (README's API sketch) and TOML blocks
are not commands. The test fails naming the first line that exits non-zero.

Slow (6 min 27 s on two shared CPU cores, one busy with another run: README.md 244 s,
docs/extending.md 134 s; the smoke comparison, the sciqa-smoke chain and the extension guide's
runs, each command paying its own interpreter start-up)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "docs/extending.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL = ("", "bash", "sh", "shell")
LONG = re.compile(r"#[^#\n]*\blong\s*$")
FILE = re.compile(r"^# ([\w./-]+\.(?:py|ya?ml))\s*$")


def logical_lines(body: str) -> list[str]:
    """The block's commands: continuation lines joined, blank and comment-only lines dropped."""
    out, pending = [], ""
    for raw in body.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def is_long(line: str) -> bool:
    return bool(LONG.search(line))


def script(page: str) -> tuple[str, list[str], list[str]]:
    """(bash script, lines it runs, lines it skips as long) for one page."""
    parts = ["set -e", "trap 'echo \"FAILED: $BASH_COMMAND\" >&2' ERR"]
    ran, skipped = [], []
    for i, (lang, body) in enumerate(FENCE.findall((ROOT / page).read_text())):
        first = body.splitlines()[0] if body.strip() else ""
        if lang in ("python", "yaml") and FILE.match(first):
            delimiter = f"MITIGATE_DOC_BLOCK_{i}"
            assert delimiter not in body
            parts.append(f"cat > {shlex.quote(FILE.match(first).group(1))} <<'{delimiter}'\n{body}{delimiter}")
        elif lang in SHELL:
            for line in logical_lines(body):
                if is_long(line):
                    skipped.append(line)
                    continue
                ran.append(line)
                parts += [f"echo {shlex.quote('+ ' + line)}", line]
    return "\n".join(parts) + "\n", ran, skipped


def test_the_block_parser():
    body = "# a comment\nmitigate --version\nA=1 \\\n  B=2\nmitigate reproduce --preset paper --out x # 16 min; long\n"
    assert [" ".join(x.split()) for x in logical_lines(body)] == ["mitigate --version", "A=1 B=2",
                                   "mitigate reproduce --preset paper --out x # 16 min; long"]
    assert is_long("make reproduce    # the default preset: long") and is_long("mitigate sweep x  # long")
    assert not is_long("mitigate eval --out x.json   # the longest step") and not is_long("mitigate --version")


def test_every_long_line_is_a_real_scale_run():
    """What the test skips is only what the README calls long: reproductions at real scale, the
    sweep and what needs their output, the test suite, GPU commands."""
    for page in PAGES:
        _, ran, skipped = script(page)
        assert ran, page
        for line in skipped:
            assert re.search(r"--preset (default|paper|sciqa)\b|--config baselines/|sweep|paper|make |"
                             r"accelerate launch|runs/sciqa|runs/reproduce-default|\$DATA", line), line
    readme_ran = script("README.md")[1]
    for command in ("pretrain", "train", "eval", "theory", "audit", "reproduce", "table"):
        assert any(line.startswith(f"mitigate {command} ") for line in readme_ran), command


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_command_line_runs_as_written_in_a_fresh_clone(page, tmp_path):
    text, ran, _ = script(page)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    (tmp_path / "commands.sh").write_text(text)
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "LANG": "C.UTF-8"}
    done = subprocess.run(["bash", "--noprofile", "--norc", str(tmp_path / "commands.sh")], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{page}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.count("\n+ ") + done.stdout.startswith("+ ") == len(ran)
