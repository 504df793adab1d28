"""benchmarks/cost_growth.py without running a model: argument checks, a point assembled from a
trl_compare result, the refit of the GRPO cost model, and the figure drawn from a hand-made result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import cost_growth as G  # noqa: E402

# a made-up cost: t = 0.01 + tokens (2e-5 + 1e-7 w + 2e-9 w^2 + 1e-8 L w), L = tokens / rollouts
TRUE = {"a_s": 0.01, "b_s_per_token": 2e-5, "c_s_per_token_width": 1e-7, "d_s_per_token_width2": 2e-9,
        "e_s_per_token_length_width": 1e-8}


def cost(tokens: float, rollouts: float, width: float) -> float:
    L = tokens / rollouts
    return TRUE["a_s"] + tokens * (TRUE["b_s_per_token"] + TRUE["c_s_per_token_width"] * width
                                   + TRUE["d_s_per_token_width2"] * width ** 2
                                   + TRUE["e_s_per_token_length_width"] * L * width)


def trl_compare_json(width: int, group: int, prompts: int = 64, length: float = 6.0) -> dict:
    """What trl_compare.py writes, reduced to the fields cost_growth reads; TRL is 2x (GRPO) and 3x (SDPO)."""
    rollouts = prompts * group
    t = cost(rollouts * (4 + length), rollouts, width)

    def side(s, floor, share=None):
        return {"median_s": s, "min_s": 0.9 * s, "max_s": 1.1 * s, "n": 5, "fraction_of_floor": floor,
                "mean_completion_len": length, "mean_reward": 0.5, "distilled_share": share}

    results = [{"comparison": "grpo", "mitigate": side(t, 0.4), "trl": side(2 * t, 0.2), "ratio": 2.0,
                "ratio_min": 1.5, "ratio_max": 2.5, "ratio_of_medians": 2.0,
                "mitigate_config": {"objective": {"name": "grpo"}}},
               {"comparison": "sdsd", "mitigate": side(1.5 * t, 0.35, 0.9), "trl": side(4.5 * t, 0.1, 0.8),
                "ratio": 3.0, "ratio_min": 2.0, "ratio_max": 4.0, "ratio_of_medians": 3.0,
                "mitigate_config": {"objective": {"name": "sdsd"}}}]
    return {"model": {"d": width, "layers": 3, "heads": 4}, "prompts": prompts, "group": group, "prompt_len": 4,
            "max_new_tokens": 7, "peak_gflops": 80.0, "load_avg_1min": [1.0, 1.0], "wall_seconds_rounds": 10.0,
            "results": results}


def hand_made_result() -> dict:
    points = []
    for w in (64, 128, 256, 512):
        points.append(G.point_from_trl_compare("width", w, trl_compare_json(w, 8)))
    for g in (4, 8, 16, 32):
        points.append(G.point_from_trl_compare("group", g, trl_compare_json(128, g)))
    for n in (6, 10, 14, 18):
        rollouts, tokens = 512, 512 * (4 + n + 1)
        t = cost(tokens, rollouts, 128)
        points.append(G.point_mitigate_only("length", n, "grpo", {"width": 128, "max_path_len": n},
                                            {"mitigate_s": t, "min_s": t, "max_s": t, "n": 5},
                                            fit_input={"tokens": tokens, "rollouts": rollouts, "width": 128,
                                                       "mean_s": t}))
    for M in (1, 2, 4, 8):
        points.append(G.point_mitigate_only("M", M, "sdsd", {"width": 128}, {"mitigate_s": 0.5 + 0.2 * M, "n": 5}))
    points.append({"axis": "width", "value": 1024, "error": "RuntimeError: trl_compare.py exited 1"})
    return {"points": points, "refit": None}


def test_arguments_are_checked(tmp_path):
    a = G.parse_args([])
    assert a.widths == [64, 128, 256, 512] and a.groups == [4, 8, 16, 32] and a.Ms == [1, 2, 4, 8]
    assert a.width == 128 and a.group == 8 and a.prompts == 64 and a.layers == 3 and a.heads == 4
    for bad in (["--widths", "64", "130"],  # 130 does not divide by 4 heads
                ["--width", "100", "--heads", "8"], ["--groups", "1"], ["--lengths", "4"], ["--Ms", "0"],
                ["--steps", "0"], ["--warmup", "0"], ["--threads", "0"], ["--axes", "depth"],
                ["--plot-only", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit):
            G.parse_args(bad)


def test_point_from_trl_compare_keeps_medians_ratios_and_the_floor():
    p = G.point_from_trl_compare("group", 16, trl_compare_json(128, 16))
    assert p["axis"] == "group" and p["value"] == 16 and p["source"] == "trl_compare"
    assert p["shape"] == {"width": 128, "layers": 3, "heads": 4, "prompts": 64, "group": 16, "max_new_tokens": 7}
    g, s = p["grpo"], p["sdsd"]
    assert g["trl_s"] == pytest.approx(2 * g["mitigate_s"]) and g["ratio"] == 2.0
    assert s["ratio"] == 3.0 and s["mitigate_of_floor"] == 0.35 and s["trl_of_floor"] == 0.1
    assert s["mitigate_distilled_share"] == 0.9 and g["mitigate_objective"] == {"name": "grpo"}
    # the GRPO fit input: rollouts x (prompt + mean completion length) tokens, mitigate's median
    assert p["fit_input"] == {"tokens": 1024 * 10.0, "rollouts": 1024, "width": 128, "mean_s": g["mitigate_s"]}


def test_series_skips_failed_points_and_gives_length_as_the_completion_limit():
    r = hand_made_result()
    xs, ys = G.series(r, "width", "grpo", "ratio")
    assert xs == [64, 128, 256, 512] and ys == [2.0] * 4  # the failed width 1024 is left out
    xs, _ = G.series(r, "length", "grpo", "mitigate_s")
    assert xs == [7, 11, 15, 19]
    assert G.series(r, "length", "grpo", "trl_s") == ([], [])  # mitigate-only: no TRL time
    assert G.series(r, "M", "grpo", "mitigate_s") == ([], [])


def test_refit_recovers_a_known_cost_and_counts_the_default_shape_once(tmp_path):
    r = hand_made_result()
    saved = tmp_path / "cost_model.json"
    saved.write_text(json.dumps({"fit": {k: 2 * v for k, v in TRUE.items()}}))
    out = G.refit(r, saved)
    # width 128 / group 8 is on both TRL axes: one point; 4 widths + 3 other groups + 4 lengths
    assert len(out["points"]) == 11
    f = out["fit"]
    assert f["max_rel_error"] < 1e-6
    for k, v in TRUE.items():
        assert f[k] == pytest.approx(v, rel=1e-3, abs=1e-12)
    # a saved fit with every coefficient doubled predicts twice the time
    assert out["saved_fit_rel_error"] == pytest.approx([1.0] * 11)
    few = {"points": [p for p in r["points"] if p["axis"] == "length"]}  # 4 points, 5 terms
    assert G.refit(few) is None


def test_plot_only_draws_the_figure_and_stores_the_refit(tmp_path):
    saved = tmp_path / "cost_growth.json"
    saved.write_text(json.dumps(hand_made_result()))
    fig = tmp_path / "fig" / "cost_growth"
    G.main(["--plot-only", str(saved), "--figure", str(fig), "--refit"])
    for suffix in (".png", ".pdf"):
        assert fig.with_suffix(suffix).stat().st_size > 1000
    back = json.loads(saved.read_text())
    assert back["refit"]["fit"]["max_rel_error"] < 1e-6 and len(back["points"]) == 17


def test_a_sweep_of_some_axes_draws_the_others_as_not_measured(tmp_path):
    r = hand_made_result()
    only_length = {"points": [p for p in r["points"] if p["axis"] == "length"]}
    written = G.plot(only_length, tmp_path / "partial")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in written)
