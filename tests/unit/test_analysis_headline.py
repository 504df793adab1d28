"""The figures of issue 23: paired differences against GRPO and SDSD (filled where the 95%
interval excludes 0, hollow where it does not), the collapse over training (probe pass@1, pass@n,
concepts@r with seed bands), and the sharpening control (the base at lower temperatures) as a grey
family on pass@k and a grey curve on the Pareto figure."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from analysis import figures as F
from analysis.__main__ import main
from analysis.style import FIXED, is_sharpening, method_color, sharpening_grey

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "smoke_summary_reference.json"
TEMPS = (0.8, 0.6, 0.4)


def smoke() -> dict:
    """The smoke summary without the instruments (no sharpening rows, no counts among r): each test
    adds what it checks."""
    s = json.loads(FIXTURE.read_text())
    s.pop("sharpening", None)
    s["methods"] = {n: m for n, m in s["methods"].items() if not n.startswith("base@t")}
    for m in s["methods"].values():
        for block in (m["id"], m["ci95"]["id"], *[p["id"] for p in m.get("paired", {}).values()]):
            for key in ("concepts_at_r", "distinct_correct_at_r"):
                block.pop(key, None)
    s.pop("diversity_r", None)
    return s


def with_sharpening(s: dict) -> dict:
    """Three base@t rows (copies of the base, sharper: higher ID pass@1, lower OOD pass@k)."""
    s = copy.deepcopy(s)
    base = s["methods"]["base"]
    s["sharpening"] = {"temperatures": list(TEMPS), "methods": [f"base@t{t}" for t in TEMPS]}
    for i, t in enumerate(TEMPS, 1):
        m = copy.deepcopy(base)
        m["id"]["pass_at_k"] = {k: min(1.0, v + 0.05 * i) for k, v in m["id"]["pass_at_k"].items()}
        for sp in m["ood"]:
            m["ood"][sp]["pass_at_k"] = {k: max(0.0, v - 0.05 * i) for k, v in m["ood"][sp]["pass_at_k"].items()}
        s["methods"][f"base@t{t}"] = m
    return s


def set_paired(s: dict, method: str, ref: str, mean: float, ci: list[float]) -> None:
    s["methods"][method]["paired"][ref]["id"]["pass_at_k"]["1"] = {"mean": mean, "ci95": ci}


class Recorder:
    """Stands in for `save`: keeps the figure's axes (artists are read before the figure closes)."""

    def __init__(self):
        self.figs = []

    def __call__(self, fig, path):
        self.figs.append(fig)
        return [Path(path).with_suffix(".png")]


@pytest.fixture()
def rec(monkeypatch):
    r = Recorder()
    monkeypatch.setattr(F, "save", r)
    return r


# ------------------------------------------------------------------------------ paired differences


def test_headline_metrics_follow_the_summary():
    s = smoke()
    labels = [label for label, _ in F.headline_metrics(s)]
    assert labels == ["ID pass@1", "ID pass@8", "ID concepts", "closed_strategy pass@8", "rare_only pass@8"]
    for m in s["methods"].values():
        m["id"]["concepts_at_r"] = 1.0
    assert "ID concepts@r" in [label for label, _ in F.headline_metrics(s)]  # preferred when present
    assert "ID concepts" not in [label for label, _ in F.headline_metrics(s)]


def test_paired_rows_trained_first_then_base_and_sharpening():
    s = with_sharpening(smoke())
    rows = F.paired_rows(s)
    trained = [m for m in s["methods"] if m not in ("base", "grpo") and not is_sharpening(m)]
    assert rows == trained + ["base", "base@t0.8", "base@t0.6", "base@t0.4"]
    assert "grpo" not in rows  # grpo - sdsd mirrors sdsd - grpo, which is drawn


def test_paired_markers_filled_only_where_the_interval_excludes_zero(rec, tmp_path):
    s = with_sharpening(smoke())
    set_paired(s, "sdsd_cmi", "grpo", 0.1, [0.05, 0.15])  # excludes 0: filled
    set_paired(s, "sdsd_cmi", "sdsd", -0.02, [-0.06, 0.01])  # includes 0: hollow
    set_paired(s, "sdsd", "grpo", -0.2, [-0.3, -0.1])  # excludes 0: filled
    assert F.plot_paired_differences(s, tmp_path / "p") == [tmp_path / "p.png"]
    (fig,) = rec.figs
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [label for label, _ in F.headline_metrics(s)]
    rows = F.paired_rows(s)
    ax = axes[0]  # ID pass@1
    assert [t.get_text() for t in ax.get_yticklabels()] == rows
    markers = {c.get_label(): c.lines[0] for c in ax.containers}
    # every row against each reference it has, sdsd only against grpo
    assert len(markers) == 2 * len(rows) - 1
    assert "sdsd - sdsd" not in markers and "sdsd - grpo" in markers

    def filled(line):
        return line.get_markerfacecolor() != "none"

    assert filled(markers["sdsd_cmi - grpo"]) and filled(markers["sdsd - grpo"])
    assert not filled(markers["sdsd_cmi - sdsd"])
    assert sum(filled(m) for m in markers.values()) == 2  # the smoke run's other intervals include 0
    assert to_rgba(markers["sdsd_cmi - grpo"].get_color()) == to_rgba(FIXED["grpo"])
    assert to_rgba(markers["sdsd_cmi - sdsd"].get_color()) == to_rgba(FIXED["sdsd"])
    assert markers["sdsd_cmi - grpo"].get_xdata()[0] == pytest.approx(0.1)
    assert any(list(ln.get_xdata()) == [0, 0] for ln in ax.get_lines())  # the line at 0


def test_paired_figure_written_by_the_command(tmp_path):
    s = with_sharpening(smoke())
    (tmp_path / "summary.json").write_text(json.dumps(s))
    assert main(["figures", str(tmp_path)]) == 0
    for fmt in ("png", "pdf"):
        assert (tmp_path / f"paired_differences.{fmt}").stat().st_size > 5000


def test_no_paired_block_no_figure(tmp_path):
    s = smoke()
    for m in s["methods"].values():
        m.pop("paired")
    assert F.plot_paired_differences(s, tmp_path / "p") is None
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ sharpening control


def test_sharpening_family_on_pass_at_k(rec, tmp_path):
    s = with_sharpening(smoke())
    F.plot_pass_at_k(s, tmp_path / "k")
    (fig,) = rec.figs
    ax = fig.axes[0]
    grey = [ln for ln in ax.get_lines() if "base, lower T" in ln.get_label()]
    assert len(grey) == len(TEMPS)
    assert [ln.get_label() for ln in grey].count("base, lower T") == 1  # one legend entry
    shades = [float(ln.get_color()) for ln in grey]  # highest T first: darkest, then lighter
    assert shades == sorted(shades) and shades[0] < shades[-1]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend.count("base, lower T") == 1 and not any(t.startswith("base@t") for t in legend)
    # the coloured methods keep the colours they have without the sharpening rows
    plain = list(smoke()["methods"])
    assert all(method_color(m, list(s["methods"])) == method_color(m, plain) for m in plain)


def test_sharpening_curve_on_pareto(rec, tmp_path):
    s = with_sharpening(smoke())
    F.plot_pareto(s, tmp_path / "p")
    (fig,) = rec.figs
    ax = fig.axes[0]
    (curve,) = [ln for ln in ax.get_lines() if ln.get_label() == "sharpening (base at lower T)"]
    xs = list(curve.get_xdata())
    assert len(xs) == len(TEMPS) + 1 and xs == sorted(xs)  # base and the three, by ID pass@1
    assert xs[0] == s["methods"]["base"]["id"]["pass_at_k"]["1"]
    # the base@t rows are not drawn as method points
    assert not any(c.get_label().startswith("base@t") for c in ax.containers)


def test_no_sharpening_block_figures_as_before(rec, tmp_path):
    s = smoke()
    F.plot_pass_at_k(s, tmp_path / "k")
    F.plot_pareto(s, tmp_path / "p")
    for fig in rec.figs:
        assert not any("lower T" in ln.get_label() for ax in fig.axes for ln in ax.get_lines())


def test_sharpening_grey_lighter_for_lower_temperature():
    assert float(sharpening_grey(0.4, TEMPS)) > float(sharpening_grey(0.8, TEMPS))
    assert sharpening_grey(0.5, [0.5]) == sharpening_grey(0.5, [0.5])
    assert F.sharpening_rows({"methods": {"base": {}, "base@t0.5": {}, "base@t0.7": {}}}) == \
        [(0.7, "base@t0.7"), (0.5, "base@t0.5")]  # from the names when the block is absent


# ------------------------------------------------------------------------------ collapse over training


def rows_of(seed: int, steps: int = 4, new: bool = True) -> list[dict]:
    out = []
    for t in range(steps + 1):
        r = {"step": t, "probe_pass_at_1": 0.5 + 0.05 * t + 0.01 * seed, "probe_concepts": 2.0 - 0.1 * t}
        if new:
            r.update(probe_pass_at_n=0.9 - 0.02 * t,
                     probe_concepts_at_r=None if t == 0 else 2.5 - 0.2 * t + 0.05 * seed)
        out.append(r)
    return out


def test_collapse_over_training_panels_and_bands(rec, tmp_path):
    runs = {"grpo": [rows_of(0), rows_of(1)], "sdsd": [rows_of(0), rows_of(1)], "sdsd_cmi": [rows_of(0)]}
    F.plot_collapse_over_training(runs, tmp_path / "c")
    (fig,) = rec.figs
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["probe pass@1", "probe pass@n", "probe concepts@r"]
    for ax in axes:
        assert {ln.get_label() for ln in ax.get_lines()} == {"grpo", "sdsd", "sdsd_cmi"}
        assert len(ax.collections) == 2  # min-max bands for the two methods with two seeds
    grpo = next(ln for ln in axes[0].get_lines() if ln.get_label() == "grpo")
    assert list(grpo.get_ydata()) == pytest.approx([0.505 + 0.05 * t for t in range(5)])  # mean over seeds
    at_r = next(ln for ln in axes[2].get_lines() if ln.get_label() == "grpo")
    assert list(at_r.get_xdata()) == [1, 2, 3, 4]  # steps where it is None are skipped


def test_collapse_skips_absent_keys_and_older_runs(rec, tmp_path):
    older = {"grpo": [rows_of(0, new=False)]}
    assert F.plot_collapse_over_training(older, tmp_path / "c") is None
    partial = {"grpo": [[{**r, "probe_concepts_at_r": None} for r in rows_of(0)]]}
    F.plot_collapse_over_training(partial, tmp_path / "c")
    (fig,) = rec.figs
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_visible()] == ["probe pass@1", "probe pass@n"]


def test_collapse_figure_from_a_run_folder(tmp_path):
    s = smoke()
    (tmp_path / "summary.json").write_text(json.dumps(s))
    for m in ("grpo", "sdsd"):
        for seed in s["methods"][m]["seeds"]:
            (tmp_path / f"{m}-seed{seed}").mkdir()
            (tmp_path / f"{m}-seed{seed}" / "metrics.jsonl").write_text(
                "\n".join(json.dumps(r) for r in rows_of(seed)) + "\n")
    assert main(["figures", str(tmp_path)]) == 0
    for fmt in ("png", "pdf"):
        assert (tmp_path / f"collapse_over_training.{fmt}").stat().st_size > 5000
