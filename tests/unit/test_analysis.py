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
    assert "does not exist" in err and "neither summary.json nor theory.json" in err
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
