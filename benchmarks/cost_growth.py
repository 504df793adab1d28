"""How cost grows (issue 28): step time of mitigate's GRPO and SDSD against model width, group size,
completion length and demonstrations M, as a ratio to TRL in the same run where TRL can run the
shape, with a one-column figure and the GRPO cost model refitted on the new points.

One axis at a time is varied from the default shape (width 128, 3 layers, 4 heads, 64 prompts x 8
rollouts, `max_path_len` 6, the `default` preset otherwise):

    width   model.n_embd in {64, 128, 256, 512} (4 heads)      TRL ratio   (benchmarks/trl_compare.py)
    group   rollouts per prompt in {4, 8, 16, 32}               TRL ratio   (benchmarks/trl_compare.py)
    length  task.max_path_len in {6, 10, 14, 18}: completion    mitigate GRPO only (benchmarks/cost_model.py)
            limit max_path_len + 1 tokens
    M       demonstrations of `sdsd_marginal` in {1, 2, 4, 8}   mitigate SDSD only (M = 1 is `sdsd`)

Width and group: one `benchmarks/trl_compare.py` run per shape (a subprocess), which steps
mitigate's GRPO, TRL's `GRPOTrainer`, mitigate's SDSD and TRL's `SDPOTrainer` in turn from one
shared base; each point keeps trl_compare's median step times, its ratio (median over rounds of
t_TRL / t_mitigate: > 1 means mitigate is faster) and each side's fraction of the compute floor.
The default shape sits on both axes and is run once. The bases are pretrained here, one per width
(`mitigate.pretrain` of the `default` preset at trl_compare's shape) and passed to trl_compare as
`--base`. `--pretrain-steps` is 40, not trl_compare's 80, because pretraining grows with width
(~0.28 s/step at width 128 on one thread, ~16x that at 512): the base only has to stop at EOS and
find some correct paths, so that rollouts have their real length and SDSD has demonstrations. Checked
at width 128: the 40-step base's rollouts were 10% correct and 53% of SDSD's rollouts had a
demonstration (the 80-step base: ~71%, ~100%); 30 steps at width 64 gave no correct rollout at all,
so SDSD ran no teacher. Every point records the rollouts' reward and SDSD's distilled share on both
sides: read the SDSD ratios with them.

Length and M have no TRL ratio. The graph task's paths are always 5 nodes (start, entry, middle,
exit, goal), so a trained base stops at EOS after ~6 tokens whatever `max_path_len` allows:
completion length only grows for a policy that does not stop, which is how `cost_model.py` measures
it (a random base, `pretrain.steps=0`, runs every rollout to the limit; a GRPO step's compute does
not depend on rewards). TRL would run such a base too, but a random base has no correct rollouts,
so SDSD/SDPO would have no demonstrations (no teacher pass) and only GRPO is measured; this axis
reuses `cost_model.measure` as is (mitigate's GRPO, one process). M: TRL's SDPO takes exactly one
demonstration (the first other successful rollout of the group) and has no mixture of M teachers,
so there is nothing to compare; this axis trains mitigate's `sdsd_marginal` (trl_compare's SDSD
settings: live teacher, reverse KL, full vocabulary, seq_mean, the preset's KL anchor; only the
objective's name and M changed) from the width-128 base in this process. Both mitigate-only axes
time steps from `metrics.jsonl`'s clock (`cost_model.step_seconds`, 10 ms resolution) and report
the mean over the timed steps (the rounding cancels in the sum); the TRL axes report medians.

`--refit` fits `cost_model.fit` (t = a + tokens (b + c w + d w^2 + e L w)) on this sweep's GRPO
points: the width and group points (mitigate's GRPO from its trained base, tokens = rollouts x
(prompt + mean completion length)) and the length points (`cost_model.measure`'s own tokens). Two
differences from `cost_model.py`'s own points: trl_compare's mitigate GRPO uses the k3 KL estimator
(TRL's; the preset's full_vocab anchor costs one more vocabulary-wide term) and a trained policy
repeats rollouts, which distinct-row scoring does not recompute; so the refit is of this sweep's
conditions, stored beside the saved `cost_model.json` fit's error on the same points, and
`cost_model.json` is not rewritten.

Output: `--out` (default `benchmarks/results/cost_growth.json`, rewritten after every point, so a
stopped sweep keeps what it measured) and the figure `--figure` .png/.pdf (one paper column, 3.3 in):
step time (log) of mitigate and TRL against width and group, the TRL / mitigate ratio under each,
and mitigate's step time against length and M.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_growth.py --threads 1 --refit     # ~15 min, 2 cores
    .venv/bin/python benchmarks/cost_growth.py --plot-only benchmarks/results/cost_growth.json --refit
    .venv/bin/python benchmarks/cost_growth.py --axes width --widths 64 128 --steps 1 --warmup 1   # a smoke

Expected wall time of the full sweep at the defaults (warmup 1 + 5 timed steps, pretrain 40 steps,
1 thread, 2-core CPU with another job on it): ~15 min, an estimate from pieces measured on this
machine, not a measured sweep: ~4 min pretraining the four bases (width 128: 17 s; width 512 ~16x
the per-step cost, ~3 min), ~4.5 min starting trl_compare's workers (~40 s per run, 7 runs of 4
processes importing torch and TRL), ~5 min of timed rounds (~47 s per round over the 7 shapes,
width 512 and group 32 the longest) and ~1.5 min for length and M. `--workdir DIR` keeps the bases,
so a rerun skips the pretraining.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AXES = ("width", "group", "length", "M")
TRL_AXES = ("width", "group")  # the axes with a TRL ratio; length and M are mitigate-only
DEFAULT_SHAPE = {"width": 128, "layers": 3, "heads": 4, "prompts": 64, "group": 8, "max_path_len": 6}
DEFAULT_VALUES = {"width": [64, 128, 256, 512], "group": [4, 8, 16, 32], "length": [6, 10, 14, 18],
                  "M": [1, 2, 4, 8]}
AXIS_LABEL = {"width": "width (n_embd)", "group": "group size",
              "length": "completion limit (tokens)", "M": "M (sdsd_marginal)"}


# ----------------------------------------------------------------------------- arguments

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES), help="axes to measure")
    ap.add_argument("--widths", nargs="+", type=int, default=DEFAULT_VALUES["width"])
    ap.add_argument("--groups", nargs="+", type=int, default=DEFAULT_VALUES["group"])
    ap.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_VALUES["length"],
                    help="task.max_path_len values (completion limit = value + 1); cost_model.measure's shape: "
                         "--width, --prompts, --group, 3 layers, 4 heads")
    ap.add_argument("--Ms", nargs="+", type=int, default=DEFAULT_VALUES["M"], help="sdsd_marginal's M values")
    ap.add_argument("--width", type=int, default=DEFAULT_SHAPE["width"], help="width of the other axes' shape")
    ap.add_argument("--group", type=int, default=DEFAULT_SHAPE["group"], help="group of the other axes' shape")
    ap.add_argument("--layers", type=int, default=DEFAULT_SHAPE["layers"])
    ap.add_argument("--heads", type=int, default=DEFAULT_SHAPE["heads"], help="attention heads (divides every width)")
    ap.add_argument("--prompts", type=int, default=DEFAULT_SHAPE["prompts"], help="prompts per step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per point")
    ap.add_argument("--warmup", type=int, default=1, help="steps per point dropped before timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    ap.add_argument("--pretrain-steps", type=int, default=40, help="pretraining steps of each width's base")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="bases, runs and trl_compare's JSONs (kept; a base already there "
                                                 "is reused). Default: a temporary folder, removed")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_growth.json"))
    ap.add_argument("--figure", type=Path, default=Path("benchmarks/results/cost_growth"),
                    help="figure path without suffix (.png and .pdf are written)")
    ap.add_argument("--refit", action="store_true", help="refit cost_model.py's model on the GRPO points")
    ap.add_argument("--plot-only", type=Path, metavar="FILE", help="redraw (and with --refit refit) a saved JSON")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = parser()
    a = ap.parse_args(argv)
    if a.plot_only is not None:
        if not a.plot_only.is_file():
            ap.error(f"--plot-only {a.plot_only}: no such file")
        return a
    if a.steps < 1 or a.warmup < 1:
        # >= 1 warm-up step: the mitigate-only axes time a step as the difference of two logged clocks
        ap.error("--steps and --warmup must be >= 1")
    if a.threads < 1 or a.prompts < 1 or a.layers < 1 or a.heads < 1 or a.pretrain_steps < 0:
        ap.error("--threads, --prompts, --layers, --heads must be >= 1 and --pretrain-steps >= 0")
    for w in sorted({*a.widths, a.width}):
        if w < 1 or w % a.heads:
            ap.error(f"width {w} must be positive and divide by --heads {a.heads}")
    if min([*a.groups, a.group]) < 2:
        ap.error("group sizes must be >= 2 (GRPO needs a group)")
    if min(a.lengths) < 5:
        ap.error("--lengths are task.max_path_len values, >= 5 (a path has 5 nodes)")
    if min(a.Ms) < 1:
        ap.error("--Ms must be >= 1")
    return a


# ----------------------------------------------------------------------------- points

def _side(res: dict, side: str, key: str):
    return res[side].get(key)


def point_from_trl_compare(axis: str, value: int, tc: dict) -> dict:
    """One point from a trl_compare.py result JSON: per comparison the mitigate and TRL medians,
    the ratio, each side's fraction of the compute floor, and GRPO's input to `cost_model.fit`."""
    m = tc["model"]
    shape = {"width": m["d"], "layers": m["layers"], "heads": m["heads"], "prompts": tc["prompts"],
             "group": tc["group"], "max_new_tokens": tc["max_new_tokens"]}
    point = {"axis": axis, "value": value, "source": "trl_compare", "shape": shape, "grpo": None, "sdsd": None,
             "fit_input": None, "peak_gflops": tc.get("peak_gflops"), "load_avg_1min": tc.get("load_avg_1min"),
             "wall_seconds_rounds": tc.get("wall_seconds_rounds"), "statistic": "median"}
    for res in tc["results"]:
        pair = res["comparison"]
        point[pair] = {
            "mitigate_s": res["mitigate"]["median_s"], "trl_s": res["trl"]["median_s"],
            "mitigate_min_s": res["mitigate"]["min_s"], "mitigate_max_s": res["mitigate"]["max_s"],
            "trl_min_s": res["trl"]["min_s"], "trl_max_s": res["trl"]["max_s"], "n": res["mitigate"]["n"],
            "ratio": res["ratio"], "ratio_min": res["ratio_min"], "ratio_max": res["ratio_max"],
            "ratio_of_medians": res["ratio_of_medians"],
            "mitigate_of_floor": _side(res, "mitigate", "fraction_of_floor"),
            "trl_of_floor": _side(res, "trl", "fraction_of_floor"),
            "mitigate_len": _side(res, "mitigate", "mean_completion_len"),
            "trl_len": _side(res, "trl", "mean_completion_len"),
            "mitigate_reward": _side(res, "mitigate", "mean_reward"), "trl_reward": _side(res, "trl", "mean_reward"),
            "mitigate_distilled_share": _side(res, "mitigate", "distilled_share"),
            "trl_distilled_share": _side(res, "trl", "distilled_share"),
            "mitigate_objective": res.get("mitigate_config", {}).get("objective")}
        if pair == "grpo" and point[pair]["mitigate_len"] is not None:
            rollouts = tc["prompts"] * tc["group"]
            point["fit_input"] = {"tokens": rollouts * (tc["prompt_len"] + point[pair]["mitigate_len"]),
                                  "rollouts": rollouts, "width": m["d"], "mean_s": point[pair]["mitigate_s"]}
    return point


def point_mitigate_only(axis: str, value: int, pair: str, shape: dict, times: dict, extra: dict | None = None,
                        fit_input: dict | None = None) -> dict:
    """A point without TRL: `times` has mitigate_s (the mean over the timed steps), min_s, max_s, n."""
    entry = {"mitigate_s": times["mitigate_s"], "mitigate_min_s": times.get("min_s"),
             "mitigate_max_s": times.get("max_s"), "n": times.get("n"), "trl_s": None, "ratio": None,
             **(extra or {})}
    return {"axis": axis, "value": value, "source": "mitigate", "shape": shape, "statistic": "mean",
            "grpo": entry if pair == "grpo" else None, "sdsd": entry if pair == "sdsd" else None,
            "fit_input": fit_input}


def axis_points(result: dict, axis: str) -> list[dict]:
    """The axis' measured points (no error), by value."""
    return sorted((p for p in result["points"] if p["axis"] == axis and not p.get("error")), key=lambda p: p["value"])


def series(result: dict, axis: str, pair: str, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for p in axis_points(result, axis):
        v = (p.get(pair) or {}).get(key)
        if v is not None and (not isinstance(v, float) or math.isfinite(v)):
            xs.append(p["value"] + (1 if axis == "length" else 0))  # length: the completion limit in tokens
            ys.append(v)
    return xs, ys


# ----------------------------------------------------------------------------- refit

def refit(result: dict, saved_model: Path | None = None) -> dict | None:
    """`cost_model.fit` on the GRPO points that carry a fit input (distinct shapes once), with the
    saved cost_model.json fit's relative error on the same points. None with fewer points than terms."""
    import cost_model

    seen, pts = set(), []
    for p in result["points"]:
        f = p.get("fit_input")
        if not f or p.get("error"):
            continue
        key = (p["source"], json.dumps(p["shape"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        pts.append({**f, "axis": p["axis"], "value": p["value"], "source": p["source"]})
    if len(pts) < len(cost_model.TERMS):
        print(f"refit skipped: {len(pts)} GRPO points, the model has {len(cost_model.TERMS)} terms")
        return None
    fit = cost_model.fit(pts)
    out = {"points": pts, "fit": fit, "saved_fit_file": None, "saved_fit_rel_error": None}
    if saved_model is not None and saved_model.is_file():
        old = json.loads(saved_model.read_text())["fit"]
        out["saved_fit_file"] = str(saved_model)
        out["saved_fit_rel_error"] = [cost_model.predict(old, p["tokens"], p["rollouts"], p["width"]) / p["mean_s"] - 1
                                      for p in pts]
    return out


def report_refit(r: dict | None) -> None:
    if r is None:
        return
    f = r["fit"]
    print(f"refit on {len(r['points'])} GRPO points: t = {f['a_s']:.3f} s + tokens x ({f['b_s_per_token']:.3g} + "
          f"{f['c_s_per_token_width']:.3g} w + {f['d_s_per_token_width2']:.3g} w^2 + "
          f"{f['e_s_per_token_length_width']:.3g} L w) s; max relative error {f['max_rel_error']:.1%}")
    if r["saved_fit_rel_error"] is not None:
        errs = r["saved_fit_rel_error"]
        print(f"the saved fit ({r['saved_fit_file']}) on these points: relative error {min(errs):+.1%} .. "
              f"{max(errs):+.1%}")


# ----------------------------------------------------------------------------- figure

def plot(result: dict, path: Path) -> list[Path]:
    """Width and group: step time (log) of mitigate and TRL, GRPO and SDSD, with TRL / mitigate
    under each; length (mitigate GRPO) and M (mitigate sdsd_marginal) step time. One column wide."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    from analysis.figures import save
    from analysis.style import COLUMN_WIDTH, FIXED, FIXED_MARKERS, RC

    def log_y(ax_):  # 1-2-5 ticks written plainly (0.5, 1, 2), no minor ticks; an axis not measured says so
        if not any(len(line.get_xdata()) for line in ax_.get_lines()):
            ax_.text(0.5, 0.5, "not measured", transform=ax_.transAxes, ha="center", va="center", color="0.4")
            ax_.set_xticks([])
            ax_.set_yticks([])
            return
        ax_.set_yscale("log")
        ax_.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax_.yaxis.set_minor_locator(NullLocator())

    def style(pair, side):
        return {"color": FIXED[pair], "marker": FIXED_MARKERS[pair], "linestyle": "-" if side == "mitigate" else "--",
                "markerfacecolor": FIXED[pair] if side == "mitigate" else "white"}

    with plt.rc_context(RC):
        fig, ax = plt.subplots(3, 2, figsize=(COLUMN_WIDTH, 4.3), layout="constrained",
                               gridspec_kw={"height_ratios": [1.3, 0.8, 1.1]})
        for j, axis in enumerate(TRL_AXES):
            top, bottom = ax[0, j], ax[1, j]
            for pair in ("grpo", "sdsd"):
                for side in ("mitigate", "trl"):
                    xs, ys = series(result, axis, pair, f"{side}_s")
                    top.plot(xs, ys, **style(pair, side))
                xs, ys = series(result, axis, pair, "ratio")
                bottom.plot(xs, ys, **style(pair, "mitigate"))
            bottom.axhline(1.0, color="0.4", linewidth=0.6, linestyle=":")
            bottom.set_xlabel(AXIS_LABEL[axis])
            values = [p["value"] for p in axis_points(result, axis)]
            for a_ in (top, bottom) if values else ():
                a_.set_xscale("log", base=2)
                a_.set_xticks(values)
                a_.get_xaxis().set_major_formatter("{x:g}")
                a_.minorticks_off()
            log_y(top)
            if not values:
                bottom.set_xticks([])
                bottom.set_yticks([])
            top.tick_params(labelbottom=False)
        ax[0, 0].set_ylabel("s / step")
        ax[1, 0].set_ylabel("TRL / mitigate")
        xs, ys = series(result, "length", "grpo", "mitigate_s")
        ax[2, 0].plot(xs, ys, **style("grpo", "mitigate"))
        if xs:
            ax[2, 0].set_xticks(xs)
        ax[2, 0].set_xlabel(AXIS_LABEL["length"])
        ax[2, 0].set_ylabel("s / step")
        xs, ys = series(result, "M", "sdsd", "mitigate_s")
        ax[2, 1].plot(xs, ys, **style("sdsd", "mitigate"))
        if xs:
            ax[2, 1].set_xscale("log", base=2)
            ax[2, 1].set_xticks(xs)
            ax[2, 1].get_xaxis().set_major_formatter("{x:g}")
            ax[2, 1].minorticks_off()
        ax[2, 1].set_xlabel(AXIS_LABEL["M"])
        for a_ in ax[2]:
            log_y(a_)
        handles = [Line2D([], [], **style(p, s)) for p in ("grpo", "sdsd") for s in ("mitigate", "trl")]
        labels = ["mitigate GRPO", "TRL GRPO", "mitigate SDSD", "TRL SDPO"]
        fig.legend(handles, labels, loc="outside lower center", ncol=2)
        return save(fig, path)


# ----------------------------------------------------------------------------- measuring

def base_spec(a: argparse.Namespace, width: int, group: int, workdir: Path, train_steps: int) -> dict:
    """trl_compare's spec (what its `mitigate_config` reads) for this shape."""
    return {"device": "cpu", "threads": a.threads, "seed": a.seed, "width": width, "layers": a.layers,
            "heads": a.heads, "pretrain_steps": a.pretrain_steps, "train_steps": train_steps, "prompts": a.prompts,
            "group": group, "temperature": 1.0, "lr": None, "beta": None, "grpo_kl_estimator": "k3",
            "sdsd_kl_coef": None, "workdir": str(workdir)}


def ensure_base(a: argparse.Namespace, width: int, workdir: Path) -> tuple[Path, float]:
    """The width's base (`default` preset, trl_compare's shape, --pretrain-steps): reused from the
    workdir if there, else pretrained; (path, seconds spent)."""
    import trl_compare

    import mitigate
    from mitigate.policies import resolve_checkpoint

    out = workdir / f"base-w{width}-l{a.layers}-p{a.pretrain_steps}-s{a.seed}"
    try:
        resolve_checkpoint(out)
        return out, 0.0
    except Exception:
        pass
    t0 = time.time()
    print(f"pretraining the width-{width} base ({a.pretrain_steps} steps) in {out} ...", flush=True)
    mitigate.pretrain(trl_compare.mitigate_config(base_spec(a, width, a.group, workdir, 1)), out, overwrite=True,
                      quiet=True)
    return out, time.time() - t0


def run_trl_compare(a: argparse.Namespace, width: int, group: int, base: Path, out: Path) -> dict:
    cmd = [sys.executable, str(HERE / "trl_compare.py"), "--width", str(width), "--layers", str(a.layers),
           "--heads", str(a.heads), "--prompts", str(a.prompts), "--group", str(group), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed), "--base", str(base),
           "--out", str(out)]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(a.threads))}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"trl_compare.py exited {proc.returncode}")
    return json.loads(out.read_text())


def measure_length(a: argparse.Namespace, max_path_len: int, workdir: Path) -> dict:
    """cost_model.measure at this max_path_len (a random base, mitigate GRPO, preset settings)."""
    import cost_model

    point = {**cost_model.DEFAULTS, "prompts": a.prompts, "group": a.group, "width": a.width,
             "max_path_len": max_path_len}
    (workdir / "length").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"max_path_len{max_path_len}-", dir=workdir / "length"))  # fresh on a rerun
    r = cost_model.measure(point, a.warmup + a.steps, a.warmup, work)
    shape = {"width": a.width, "layers": 3, "heads": 4, "prompts": a.prompts, "group": a.group,
             "max_path_len": max_path_len, "max_new_tokens": max_path_len + 1, "base": "random (pretrain.steps=0)"}
    return point_mitigate_only("length", max_path_len, "grpo", shape,
                               {"mitigate_s": r["mean_s"], "min_s": r["min_s"], "max_s": r["max_s"],
                                "n": r["timed_steps"]},
                               extra={"tokens": r["tokens"], "rollouts": r["rollouts"], "objective": "grpo",
                                      "kl_estimator": "preset (full_vocab)"},
                               fit_input={k: r[k] for k in ("tokens", "rollouts", "width", "mean_s")})


def measure_m(a: argparse.Namespace, M: int, base: Path, workdir: Path) -> dict:
    """sdsd_marginal with M demonstrations, trl_compare's SDSD settings otherwise, from `base`."""
    import cost_model
    import trl_compare

    import mitigate
    from mitigate import config as C
    from mitigate.policies import resolve_checkpoint

    spec = base_spec(a, a.width, a.group, workdir, a.warmup + a.steps)
    spec["activation"] = json.loads((resolve_checkpoint(base) / "config.json").read_text()).get("activation_function")
    cfg = trl_compare.mitigate_config(spec, "sdsd")
    cfg.train.objective = {**C.to_dict(cfg)["train"]["objective"], "name": "sdsd_marginal", "M": M}
    t0 = time.time()
    run = mitigate.train(cfg, base, workdir / f"sdsd_marginal-M{M}", overwrite=True, quiet=True)
    wall = time.time() - t0
    secs = cost_model.step_seconds(Path(run), a.warmup)
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("step", 0) > a.warmup and "reward" in r]
    reward = st.mean(r["reward"] for r in rows) if rows else None
    masked = [r["masked_prompts"] for r in rows if "masked_prompts" in r]
    shape = {"width": a.width, "layers": a.layers, "heads": a.heads, "prompts": a.prompts, "group": a.group,
             "max_path_len": DEFAULT_SHAPE["max_path_len"]}
    return point_mitigate_only("M", M, "sdsd", shape,
                               {"mitigate_s": sum(secs) / len(secs), "min_s": min(secs), "max_s": max(secs),
                                "n": len(secs)},
                               extra={"objective": C.to_dict(cfg.train.objective), "mitigate_reward": reward,
                                      "mitigate_distilled_share": 1 - st.mean(masked) if masked else None,
                                      "wall_s": round(wall, 1)})


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")  # default: never lose a sweep to a type
    tmp.replace(path)


def sweep(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    tmp = None
    if a.workdir is not None:
        workdir = a.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cost_growth_")
        workdir = Path(tmp.name)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "threads": a.threads, "torch": torch.__version__},
              "revision": rev.strip() or None, "command": " ".join(sys.argv),
              "settings": {"steps": a.steps, "warmup": a.warmup, "pretrain_steps": a.pretrain_steps,
                           "seed": a.seed, "default_shape": {"width": a.width, "layers": a.layers, "heads": a.heads,
                                                             "prompts": a.prompts, "group": a.group,
                                                             "max_path_len": DEFAULT_SHAPE["max_path_len"]}},
              "trl_axes": list(TRL_AXES), "mitigate_only_axes": ["length", "M"], "points": [], "pretrain_s": {},
              "refit": None}
    t_start = time.time()
    done: dict[tuple, dict] = {}  # (width, group) -> trl_compare point: the default shape runs once

    def keep(point: dict) -> None:
        result["points"].append(point)
        result["wall_s"] = round(time.time() - t_start, 1)
        write(result, a.out)
        for pair in ("grpo", "sdsd"):
            e = point.get(pair)
            if e:
                trl = f", TRL {e['trl_s']:.3f} s, ratio {e['ratio']:.2f}x" if e.get("trl_s") is not None else ""
                print(f"[{result['wall_s']:.0f} s] {point['axis']} {point['value']}: mitigate {pair} "
                      f"{e['mitigate_s']:.3f} s/step{trl}", flush=True)
        if point.get("error"):
            print(f"[{result['wall_s']:.0f} s] {point['axis']} {point['value']}: failed: {point['error']}", flush=True)

    def base_for(width: int) -> Path:
        base, secs = ensure_base(a, width, workdir)
        result["pretrain_s"].setdefault(str(width), round(secs, 1))
        return base

    try:
        for axis in a.axes:
            values = {"width": a.widths, "group": a.groups, "length": a.lengths, "M": a.Ms}[axis]
            for v in values:
                try:
                    if axis in TRL_AXES:
                        width, group = (v, a.group) if axis == "width" else (a.width, v)
                        if (width, group) not in done:
                            base = base_for(width)
                            t0 = time.time()
                            tc = run_trl_compare(a, width, group, base, workdir / f"trl_compare-w{width}-g{group}.json")
                            done[(width, group)] = {**point_from_trl_compare(axis, v, tc),
                                                    "wall_s": round(time.time() - t0, 1)}
                        point = {**done[(width, group)], "axis": axis, "value": v}
                    elif axis == "length":
                        point = measure_length(a, v, workdir)
                    else:
                        point = measure_m(a, v, base_for(a.width), workdir)
                except Exception as e:  # one failed shape does not lose the others
                    point = {"axis": axis, "value": v, "error": f"{type(e).__name__}: {e}"}
                keep(point)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(getattr(a, "threads", 1)))
    if a.plot_only is not None:
        result = json.loads(a.plot_only.read_text())
        out = a.plot_only
    else:
        result = sweep(a)
        out = a.out
    if a.refit:
        result["refit"] = refit(result, HERE / "results" / "cost_model.json")
        report_refit(result["refit"])
        write(result, out)  # the sweep wrote every point as it went; --plot-only alone leaves FILE as it is
    written = plot(result, a.figure)
    print(f"wrote {', '.join(map(str, written))}" + ("" if a.plot_only is not None and not a.refit else f", {out}"))


if __name__ == "__main__":
    main()
