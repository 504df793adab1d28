"""`python -m analysis readme FILE.md [--check]`: the generated tables of a Markdown file equal the
summaries they name. Round trip on tests/fixtures/readme: generate, --check passes; a number
edited by hand (or a summary that moved) fails --check with a diff, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis import readme as R
from analysis.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "readme"
BLOCKS = ["main", "paired", "ratio", "primary"]


def test_the_committed_fixture_is_up_to_date(capsys):
    assert main(["readme", "--check", str(FIXTURE / "README.md")]) == 0
    assert "up to date (4 generated blocks)" in capsys.readouterr().out


@pytest.fixture()
def md(tmp_path):
    """The fixture README with its generated bodies emptied, the summary beside it (root = tmp)."""
    (tmp_path / "runs").mkdir()
    shutil.copy(FIXTURE / "summary.json", tmp_path / "runs" / "summary.json")
    text = (FIXTURE / "README.md").read_text().replace("tests/fixtures/readme/summary.json", "runs/summary.json")
    out, keep = [], True
    for line in text.splitlines(keepends=True):
        if line.startswith("<!-- /mitigate:table"):
            keep = True
        if keep:
            out.append(line)
        if line.startswith("<!-- mitigate:table"):
            keep = False
    path = tmp_path / "README.md"
    path.write_text("".join(out))
    return path


def run(path: Path, *flags: str) -> int:
    return main(["readme", *flags, "--root", str(path.parent), str(path)])


def test_round_trip(md, capsys):
    empty = md.read_text()
    assert "\n| sdsd |" not in empty
    assert run(md, "--check") == 1  # empty bodies are stale
    assert md.read_text() == empty  # --check writes nothing
    assert run(md) == 0
    text = md.read_text()
    assert text.count("\n| sdsd |") == 3  # main, paired, ratio (rows that start with it)
    assert run(md, "--check") == 0
    capsys.readouterr()
    # the generated text is the committed fixture's (same summary, other path)
    assert text == (FIXTURE / "README.md").read_text().replace("tests/fixtures/readme/summary.json",
                                                                "runs/summary.json")
    # a number edited by hand: --check fails with a diff naming both lines, and writes nothing
    edited = text.replace("0.603 [0.572, 0.634]", "0.613 [0.572, 0.634]")
    assert edited != text
    md.write_text(edited)
    assert run(md, "--check") == 1
    out = capsys.readouterr().out
    assert "-| grpo | 3 | 0.613 [0.572, 0.634]" in out and "+| grpo | 3 | 0.603 [0.572, 0.634]" in out
    assert md.read_text() == edited
    assert run(md) == 0 and md.read_text() == text  # rewritten back
    # the summary moves (a rerun): the README is stale until regenerated
    s = json.loads((md.parent / "runs" / "summary.json").read_text())
    s["methods"]["sdsd"]["id"]["pass_at_k"]["1"] = 0.6554  # 0.655 -> 0.655: same at the printed precision
    (md.parent / "runs" / "summary.json").write_text(json.dumps(s))
    assert run(md, "--check") == 0
    s["methods"]["sdsd"]["id"]["pass_at_k"]["1"] = 0.6556  # -> 0.656
    (md.parent / "runs" / "summary.json").write_text(json.dumps(s))
    assert run(md, "--check") == 1
    assert "+| sdsd | 3 | 0.656" in capsys.readouterr().out


def test_table_contents():
    s = json.loads((FIXTURE / "summary.json").read_text())
    main_t = R.main_table(s, {})
    assert main_t.splitlines()[0] == ("| method | seeds | ID pass@1 | ID pass@8 | ID concepts | ID concepts@r "
                                      "| rare_only pass@8 |")
    assert "| base | 1 | 0.412 [0.381, 0.443] |" in main_t
    paired = R.paired_table(s, {"ref": "grpo"}).splitlines()
    sdsd = next(r for r in paired if r.startswith("| sdsd |"))
    assert "**-0.107 [-0.187, -0.027]**" in sdsd  # interval excludes 0: bold
    assert sdsd.endswith("| -0.025 [-0.075, +0.025] |")  # includes 0: plain
    assert not any(r.startswith("| grpo |") for r in paired)  # no row against itself
    assert R.paired_table(s, {"ref": "sdsd", "methods": "grpo"}).count("\n| grpo |") == 1
    ratio = R.ratio_table(s, {"ref": "grpo"})
    assert ratio.splitlines()[0] == ("| method | slope | partial slope | sharpening | KL(correct) | slope − grpo | "
                                     "partial − grpo |")
    # the fixture predates the partial slope: those cells are n/a, the rest as before
    assert "| sdsd | 0.553 [0.371, 0.735] | n/a | n/a | 0.244 [0.170, 0.318] | **+0.512 [+0.312, +0.712]** | |" \
        in ratio.replace("|  |", "| |")
    primary = R.primary_table(s, {}).splitlines()
    assert len(primary) == 2 + 3
    assert primary[2].endswith("| -0.107 [-0.187, -0.027] | 0.004 | 0.013 | **yes** |")
    assert primary[4].endswith("| <0.001 | 0.001 | **yes** |") and primary[3].endswith("| no |")
    s.pop("ratio_test"), s.pop("primary")
    assert R.ratio_table(s, {}) == "_No ratio test in this summary._"
    assert R.primary_table(s, {}) == "_No primary endpoints in this summary._"


def test_primary_table_of_one_task_seed_from_a_pooled_summary():
    """`task=SEED` prints that task seed's own family (its own Holm p-values), not the pooled one."""
    s = json.loads((ROOT / "baselines" / "runs" / "paper-pooled" / "summary.json").read_text())
    pooled = R.primary_table(s, {})
    for i, seed in enumerate(s["pooled_task_seeds"]):
        own = R.primary_table(s, {"task": str(seed)})
        tests = s["primary"]["per_task"][i]["tests"]
        assert own != pooled and len(own.splitlines()) == 2 + len(tests)
        for line, t in zip(own.splitlines()[2:], tests):
            assert f"| {R._p(t['p_holm'])} |" in line and line.endswith("**yes** |" if t["holds"] else "| no |")
    with pytest.raises(R.ReadmeError, match="task=7: not a task seed"):
        R.primary_table(s, {"task": "7"})
    one = json.loads((ROOT / "baselines" / "runs" / "paper" / "summary.json").read_text())
    with pytest.raises(R.ReadmeError, match="not a pooled summary"):
        R.primary_table(one, {"task": "0"})


@pytest.mark.parametrize("block, message", [
    ("<!-- mitigate:table main runs/summary.json -->\n", "no closing"),
    ("<!-- mitigate:table mean runs/summary.json -->\n<!-- /mitigate:table -->\n", "unknown table kind 'mean'"),
    ("<!-- mitigate:table main runs/nothing.json -->\n<!-- /mitigate:table -->\n", "not found"),
    ("<!-- mitigate:table main -->\n<!-- /mitigate:table -->\n", "needs KIND and SUMMARY_JSON"),
    ("<!-- mitigate:table paired runs/summary.json reff=grpo -->\n<!-- /mitigate:table -->\n", "unknown option"),
    ("<!-- mitigate:table main runs/summary.json methods=base,zeta -->\n<!-- /mitigate:table -->\n",
     "zeta not in the summary"),
])
def test_bad_blocks_exit_2_and_write_nothing(md, capsys, block, message):
    text = md.read_text() + "\n" + block
    md.write_text(text)
    assert run(md) == 2
    err = capsys.readouterr().err
    assert message in err and "README.md:" in err  # names the file and line
    assert md.read_text() == text


def test_code_blocks_are_left_alone():
    text = "```\n<!-- mitigate:table main nowhere.json -->\nold\n<!-- /mitigate:table -->\n```\n"
    assert R.render(text) == text
    assert R.blocks(text) == []


def test_missing_file_exits_2(tmp_path):
    assert main(["readme", str(tmp_path / "nope.md")]) == 2


def test_sharpening_and_tradeoff_kinds_print_gaps_bold_only_when_clear():
    from analysis import readme as R

    g = {"median": -0.12, "ci95": [-0.2, -0.05], "outside_share": 0.0}
    unclear = {"median": -0.12, "ci95": [-0.2, -0.05], "outside_share": 0.3}
    by_metric = {"id concepts_at_r": g, "rare_only pass_at_k/64": unclear}
    summary = {"methods": {}, "sharpening": {"gaps_above": {"sdsd": {"sharpening": by_metric}}},
               "tradeoff": {"gaps_above": {"sdsd_cmi": {"grpo": {"id concepts": g}}}}}
    sharp = R.sharpening_table(summary, {})
    assert "**-0.120 [-0.200, -0.050]**" in sharp  # excludes 0, inside the curve's range
    assert "| sdsd | sharpening | rare_only pass_at_k/64 | -0.120 [-0.200, -0.050] | 0.30 |" in sharp
    assert "| sdsd_cmi | grpo | id concepts |" in R.tradeoff_table(summary, {})
    assert R.sharpening_table({"methods": {}}, {}) == "_No sharpening control in this summary._"


def test_per_task_kind_prints_the_pooled_row_then_each_task_seed():
    from analysis import readme as R

    d = {"mean": -0.1, "ci95": [-0.2, -0.05]}
    paired = {"id": {"pass_at_k": {"1": d, "64": d}}, "ood": {}}
    m = {"seeds": [0], "id": {"pass_at_k": {"1": 0.5, "64": 0.9}}, "ood": {}, "ci95": {},
         "paired": {"grpo": paired}, "per_task": [{"task_seed": 3, "paired": {"grpo": paired}},
                                                  {"task_seed": 5, "paired": {"grpo": paired}}]}
    out = R.per_task_table({"pooled_task_seeds": [3, 5], "methods": {"sdsd": m}}, {}).splitlines()
    assert [r.split("|")[2].strip() for r in out[2:]] == ["pooled", "3", "5"]
    assert "**-0.100 [-0.200, -0.050]**" in out[2]
    assert R.per_task_table({"methods": {}}, {}).startswith("_Not a pooled summary")
