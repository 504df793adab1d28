"""`python -m analysis figures`: PNG + PDF from summary.json and theory.json, split names read from
the summary (never hard-coded), one colour per method across figures, exit 2 on a folder with
nothing to draw."""

from __future__ import annotations

import json

import pytest

from analysis import figures as F
from analysis.__main__ import main
from analysis.style import FIXED, method_color

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF"}
KS = ("1", "2", "4", "8")


def block(p1: float) -> tuple[dict, dict]:
    """pass@k from a per-sample success rate p1, and a +-0.05 interval of the same shape."""
    pk = {k: 1 - (1 - p1) ** int(k) for k in KS}
    return {"pass_at_k": pk}, {"pass_at_k": {k: [max(v - 0.05, 0), min(v + 0.05, 1)] for k, v in pk.items()}}


def summary(methods=("base", "grpo", "sdsd_cmi")) -> dict:
    out = {}
    for i, name in enumerate(methods):
        (b_id, c_id), (b_a, c_a), (b_b, c_b) = block(0.5 + 0.1 * i), block(0.3 - 0.05 * i), block(0.1 + 0.02 * i)
        out[name] = {"id": b_id, "ood": {"alpha": b_a, "beta": b_b},
                     "ci95": {"id": c_id, "ood": {"alpha": c_a, "beta": c_b}}}
    return {"methods": out}


def assert_figures(folder, *stems):
    for stem in stems:
        for fmt, magic in MAGIC.items():
            path = folder / f"{stem}.{fmt}"
            assert path.is_file(), path
            assert path.read_bytes()[:len(magic)] == magic, path


def test_summary_figures(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps(summary()))
    assert main(["figures", str(tmp_path)]) == 0
    assert_figures(tmp_path, "pass_at_k", "pareto")
    assert str(tmp_path / "pareto.pdf") in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_panels_follow_the_summary_splits(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(F, "save", lambda fig, path: titles.extend(ax.get_title() for ax in fig.axes) or [])
    F.plot_pass_at_k(summary(), tmp_path / "pass_at_k")
    F.plot_pareto(summary(), tmp_path / "pareto")
    assert titles[:3] == ["ID", "OOD: alpha", "OOD: beta"]
    assert "alpha" in titles[3] and "pass@8" in titles[3]  # the Pareto title names its axes


def test_one_colour_per_method_across_figures(tmp_path, monkeypatch):
    colours = []

    def record(fig, path):
        for ax in fig.axes:
            colours.extend([ln.get_color() for ln in ax.get_lines() if ln.get_label() == "sdsd_cmi"])
            colours.extend([c.lines[0].get_color() for c in ax.containers if c.get_label() == "sdsd_cmi"])
        return []

    monkeypatch.setattr(F, "save", record)
    F.plot_pass_at_k(summary(), tmp_path / "a")
    F.plot_pareto(summary(), tmp_path / "b")
    assert len(colours) == 4  # three pass@k panels and the Pareto point
    assert set(colours) == {method_color("sdsd_cmi", list(summary()["methods"]))}
    assert all(method_color(m, ["x", m]) == c for m, c in FIXED.items())
    assert method_color("x", ["x", "y"]) != method_color("y", ["x", "y"])


def test_single_method_draws_no_pareto(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(summary(("base",))))
    assert main(["figures", str(tmp_path)]) == 0
    assert_figures(tmp_path, "pass_at_k")
    assert not (tmp_path / "pareto.png").exists()


def test_folder_without_json_exits_2(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "missing")]) == 2
    assert main(["figures", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "holds none of summary.json, theory.json, audit.json" in err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def theory_json():
    from mitigate.theory import theory_report

    return {"exact": theory_report(None), "probe": {"spearman_rho": 0.5}}


def test_theory_figures(tmp_path, theory_json):
    (tmp_path / "theory.json").write_text(json.dumps(theory_json))
    rows = [{"predicted_log_shift": 0.1 * i, "measured_log_shift": 0.05 * i} for i in range(-3, 4)]
    (tmp_path / "probe_rows.json").write_text(json.dumps(rows + [{"predicted_log_shift": 0.2}]))
    assert main(["figures", str(tmp_path)]) == 0
    assert_figures(tmp_path, "tilt_vs_base", "iterated_dynamics", "marginal_bias", "probe_tilt_vs_shift")


# ----------------------------------------------------------------------------- new figures, tables, paper

FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "smoke_summary_reference.json"


def metrics_rows(shift: float, steps: int = 4) -> str:
    rows = [{"step": 0, "probe_pass_at_1": 0.5, "probe_concepts": 1.5}]
    rows += [{"step": t, "reward": 0.4 + shift + 0.1 * t, "token_entropy": 0.5 - 0.05 * t, "kl_base": 0.01 * t,
              "probe_pass_at_1": 0.5 + 0.05 * t, "probe_concepts": 1.5 - 0.1 * t} for t in range(1, steps + 1)]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


@pytest.fixture()
def smoke_folder(tmp_path):
    """A reproduce-like folder: the smoke summary and, for grpo and sdsd, runs with metrics.jsonl."""
    folder = tmp_path / "reproduce-smoke"
    folder.mkdir()
    s = json.loads(FIXTURE.read_text())
    (folder / "summary.json").write_text(json.dumps(s))
    for i, m in enumerate(("grpo", "sdsd")):
        for seed in s["methods"][m]["seeds"]:
            run = folder / f"{m}-seed{seed}"
            run.mkdir()
            (run / "metrics.jsonl").write_text(metrics_rows(0.1 * i + 0.02 * seed) + '{"step": 5, "rew')  # torn line
    return folder


def test_new_figures_from_a_smoke_summary(smoke_folder, capsys):
    assert main(["figures", str(smoke_folder)]) == 0
    assert_figures(smoke_folder, "pass_at_k", "pareto", "concept_shares", "training_dynamics")
    for fmt in MAGIC:
        assert (smoke_folder / f"concept_shares.{fmt}").stat().st_size > 5000


def test_concept_shares_and_dynamics_keep_method_colours(tmp_path, monkeypatch):
    s = json.loads(FIXTURE.read_text())
    order = ["zeta", *s["methods"]]  # a method of another folder first: colours follow `order`
    seen = {}

    def record(fig, path):
        for ax in fig.axes:
            for ln in ax.get_lines():
                if not ln.get_label().startswith("_"):
                    seen.setdefault(ln.get_label(), set()).add(ln.get_color())
        return []

    monkeypatch.setattr(F, "save", record)
    F.plot_pass_at_k(s, tmp_path / "a", order)
    runs = {"sdsd_cmi": [[json.loads(x) for x in metrics_rows(0.0).splitlines()]] * 2}
    F.plot_training_dynamics(runs, tmp_path / "b", order)
    assert seen["sdsd_cmi"] == {method_color("sdsd_cmi", order)}
    assert method_color("sdsd_cmi", order) != method_color("sdsd_cmi", list(s["methods"]))


def test_sweep_figure_one_file_per_numeric_parameter(tmp_path):
    s = json.loads(FIXTURE.read_text())
    s["methods"] = {k: s["methods"][k] for k in ("base", "sdsd_cmi", "sdsd_anticopy", "sdsd_marginal")}
    s["sweep"] = {"config": "x.yaml", "seeds": [0, 1], "settings": ["sdsd_cmi", "sdsd_anticopy", "sdsd_marginal"],
                  "varying": {"sdsd_cmi": {"train.objective.name": "sdsd_cmi", "train.objective.coef": 0.0},
                              "sdsd_anticopy": {"train.objective.name": "sdsd_cmi", "train.objective.coef": 1.0},
                              "sdsd_marginal": {"train.objective.name": "sdsd_marginal", "train.objective.coef": None}}}
    assert F.sweep_axes(s) == {"train.objective.coef": [["sdsd_cmi", "sdsd_anticopy"]]}
    written = F.plot_sweep(s, tmp_path / "sweep")
    assert sorted(p.name for p in written) == ["sweep_objective_coef.pdf", "sweep_objective_coef.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_tables_command(smoke_folder, tmp_path):
    out = tmp_path / "tables"
    assert main(["tables", str(smoke_folder), "--out", str(out), "--interval", "pm"]) == 0
    tex = (out / "reproduce-smoke-main-accuracy.tex").read_text()
    assert tex.startswith("% Generated by: python -m analysis tables") and "$\\pm$" in tex
    assert str(smoke_folder / "summary.json") in tex  # traceable: names its source and the command
    assert (out / "reproduce-smoke-main-accuracy.md").read_text().count("| sdsd_cmi |") == 1
    assert main(["tables", str(smoke_folder), "--out", str(smoke_folder / "t")]) == 2  # inside an input


def test_paper_command_writes_only_generated_folders(smoke_folder, tmp_path):
    """tables/, figures/, generated/ (methods from the resolved config) for a hand-kept main.tex;
    replaced whole on the next run; a folder this command did not write is refused. With pdflatex
    installed, the repository's main.tex compiles over them without a LaTeX error."""
    import shutil
    import subprocess

    from mitigate import config as C

    (smoke_folder / "config.yaml").write_text(C.dump(C.load(preset="smoke")))
    out = tmp_path / "paper"
    out.mkdir()
    (out / "notes.md").write_text("hand-written\n")
    assert main(["paper", str(smoke_folder), "--out", str(out)]) == 0
    assert (out / "notes.md").read_text() == "hand-written\n"
    assert (out / "main.tex").read_text() == (F.Path(__file__).resolve().parents[2] / "paper" / "main.tex").read_text()
    for name in ("tables/reproduce-smoke-main-accuracy.tex", "tables/reproduce-smoke-settings.tex",
                 "figures/reproduce-smoke-pass_at_k.pdf", "figures/reproduce-smoke-training_dynamics.pdf",
                 "generated/methods.tex", "generated/results.tex", "generated/sources.tex"):
        assert (out / name).is_file(), name
    results = (out / "generated/results.tex").read_text()
    assert "\\input{tables/reproduce-smoke-main-accuracy}" in results
    assert "figures/reproduce-smoke-concept_shares.pdf" in results
    text = (out / "generated" / "methods.tex").read_text()
    for expected in ("\\texttt{graph}", "\\texttt{n\\_concepts}\\,=\\,5", "\\texttt{tiny\\_gpt}", "2 steps",
                     "$\\beta = 0.02$", "\\texttt{full\\_vocab}", "\\texttt{reverse\\_kl}", "Seeds: 0, 1",
                     "$n = 8$ samples"):
        assert expected in text, expected
    if shutil.which("pdflatex"):
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=out,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert (out / "main.pdf").stat().st_size > 10_000
    (out / "main.tex").write_text("% my own frame\n")
    (out / "figures" / "stale.pdf").write_text("from an earlier run")
    assert main(["paper", str(smoke_folder), "--out", str(out), "--interval", "pm"]) == 0
    assert (out / "main.tex").read_text() == "% my own frame\n"  # never overwritten
    assert not (out / "figures" / "stale.pdf").exists()  # generated folders are replaced whole
    assert "$\\pm$" in (out / "tables" / "reproduce-smoke-main-accuracy.tex").read_text()
    # a folder of the same name that this command did not write is never replaced
    other = tmp_path / "paper2"
    (other / "tables").mkdir(parents=True)
    (other / "tables" / "mine.tex").write_text("hand-written")
    assert main(["paper", str(smoke_folder), "--out", str(other)]) == 2
    assert sorted(p.name for p in other.rglob("*")) == ["mine.tex", "tables"]


# ------------------------------------------------------------------- legibility (issue 29)
def test_twelve_methods_each_get_their_own_colour_and_marker():
    from analysis.style import method_style

    names = ["base", "grpo", "sdsd"] + [f"m{i}" for i in range(9)]
    styles = [method_style(n, names) for n in names]
    assert len({s["color"] for s in styles}) == 12 and len({s["marker"] for s in styles}) == 12


def test_pareto_title_breaks_between_phrases_and_its_axes_end_at_one(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(F, "save", lambda fig, path: seen.extend(fig.axes) or [])
    s = summary()
    for m in s["methods"].values():  # points at pass@k = 1 with margins would draw ticks above it
        m["ood"]["alpha"]["pass_at_k"]["8"] = 1.0
        m["ci95"]["ood"]["alpha"]["pass_at_k"]["8"] = [0.99, 1.0]
    F.plot_pareto(s, tmp_path / "pareto")
    ax = seen[0]
    assert ax.get_title().split("\n") == ["ID pass@1 vs. OOD pass@8 (alpha)", "bars: 95% intervals"]
    assert ax.get_ylim()[1] <= 1.0 and max(ax.get_yticks()[(ax.get_yticks() <= ax.get_ylim()[1])]) <= 1.0


def test_dynamics_label_the_step_axis_under_every_column(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(F, "save", lambda fig, path: seen.append(fig) or [])
    rows = [[{"step": t, "reward": 0.1 * t, "probe_pass_at_1": 0.5, "probe_concepts": 2.0, "token_entropy": 0.4,
              "kl_base": 0.01 * t} for t in range(0, 30, 10)]]
    F.plot_training_dynamics({"grpo": rows, "sdsd": rows}, tmp_path / "d")
    fig = seen[0]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5
    # five panels in two columns: the last row holds one, so both columns' lowest panels carry the axis
    labelled = [ax for ax in visible if ax.get_xlabel() == "training step"]
    assert len(labelled) == 2
    assert all(any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()) for ax in labelled)


def test_tied_mean_ranks_share_a_place_and_the_report_links_no_undrawn_figure():
    from pathlib import Path

    from mitigate.report import ranking_table, report_markdown

    s = json.loads((Path(__file__).resolve().parents[2] / "baselines/runs/default/summary.json").read_text())
    names = list(s["ranking"])
    assert len(names) >= 3
    for n in names[:2]:  # a tie at the top: both first, the next third
        s["ranking"][n]["mean rank"] = 1.5
    s["ranking"][names[2]]["mean rank"] = max(s["ranking"][names[2]]["mean rank"], 2.0)
    places = [line.split("|")[1].strip() for line in ranking_table(s).splitlines()[2:]]
    assert places[:3] == ["1", "1", "3"]
    md = report_markdown(s)
    assert "![" not in md and "mitigate-analysis figures" in md


def test_context_richness_draws_one_line_per_teacher_family_in_richness_order(tmp_path):
    s = summary(("grpo", "sdsd", "ctx_none", "ctx_answer", "opd_external", "sdsd_external"))
    for m in s["methods"].values():
        m["id"]["concepts"] = 2.0
        m["ci95"]["id"]["concepts"] = [1.8, 2.2]
    s["budget"] = {"objectives": {
        "grpo": {"name": "grpo"}, "sdsd": {"name": "sdsd", "teacher": "ema"},
        "ctx_none": {"name": "sdsd", "teacher": "ema", "teacher_context": "none"},
        "ctx_answer": {"name": "sdsd", "teacher": "ema", "teacher_context": "answer"},
        "opd_external": {"name": "sdsd", "teacher": "external", "teacher_context": "none", "teacher_path": "wide"},
        "sdsd_external": {"name": "sdsd", "teacher": "external", "teacher_path": "wide"},
        "opd_grpo": {"name": "sdsd", "teacher": "external", "teacher_context": "none", "teacher_path": "grpo"}}}
    s["methods"]["opd_grpo"] = s["methods"]["opd_external"]
    rows = F.context_rows(s)
    # the GRPO teacher has one context kind only: no line of its own, and not joined to the wide teacher's
    assert rows == {"sdsd, self teacher": [("none", "ctx_none"), ("answer", "ctx_answer"), ("full", "sdsd")],
                    "sdsd, teacher wide": [("none", "opd_external"), ("full", "sdsd_external")]}
    assert F.plot_context_richness(s, tmp_path / "ctx")
    assert_figures(tmp_path, "ctx")
    s["budget"]["objectives"] = {"grpo": {"name": "grpo"}, "sdsd": {"name": "sdsd", "teacher": "ema"}}
    assert F.plot_context_richness(s, tmp_path / "none") is None  # one context kind: nothing to compare
