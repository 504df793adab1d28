"""PNG + PDF figures from the JSON a run folder holds. Each `plot_*` takes the parsed JSON and an
output path; it writes PATH.png and PATH.pdf (atomically) and returns the paths written."""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox

from analysis.style import (
    BLUE,
    COLUMN_WIDTH,
    FIXED,
    GREEN,
    ORANGE,
    OTHERS,
    RC,
    SKY_BLUE,
    TEXT_WIDTH,
    method_style,
)
from mitigate.core.io import atomic_path

matplotlib.use("Agg")  # files only, never a window
FORMATS = ("png", "pdf")


def styled(plot):
    """Draw inside the shared style without changing matplotlib's global settings."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return plot(*args, **kwargs)

    return wrapper


def save(fig, path: str | Path) -> list[Path]:
    """PATH.png and PATH.pdf, each renamed into place once complete; the figure is closed."""
    written = []
    try:
        for fmt in FORMATS:
            target = Path(path).with_suffix(f".{fmt}")
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, bbox_inches="tight",
                            metadata={"CreationDate": None} if fmt == "pdf" else None)  # same bytes every run
            written.append(target)
    finally:
        plt.close(fig)
    return written


def legend_below(fig, handles=None, labels=None, ncol: int = 3) -> None:
    """The legend outside the axes, under them, so that it never hides data."""
    if handles is None:
        handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol, len(handles)))


# ---------------------------------------------------------------------------------------------
# summary.json


def ood_splits(summary: dict) -> list[str]:
    """Every OOD split any method reports, in the order they first appear (never hard-coded)."""
    return list(dict.fromkeys(s for m in summary["methods"].values() for s in m.get("ood", {})))


def _block(m: dict, split: str | None) -> tuple[dict | None, dict | None]:
    """(pass_at_k, ci95 pass_at_k) of a method on the ID block (split None) or one OOD split."""
    ci = m.get("ci95", {})
    if split is None:
        return m["id"]["pass_at_k"], ci.get("id", {}).get("pass_at_k")
    return m.get("ood", {}).get(split, {}).get("pass_at_k"), ci.get("ood", {}).get(split, {}).get("pass_at_k")


@styled
def plot_pass_at_k(summary: dict, path: str | Path) -> list[Path]:
    """pass@k against k (log2), one panel per split, 95% intervals as bands."""
    names = list(summary["methods"])
    panels = [("ID", None)] + [(f"OOD: {s}", s) for s in ood_splits(summary)]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    width = COLUMN_WIDTH if ncols == 1 else TEXT_WIDTH
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.9 * nrows + 0.5), squeeze=False, layout="constrained")
    for ax, (title, split) in zip(axes.flat, panels):
        ks = set()
        for name, m in summary["methods"].items():
            pk, ci = _block(m, split)
            if not pk:
                continue
            k = sorted(pk, key=int)
            x = [int(i) for i in k]
            ks.update(x)
            style = method_style(name, names)
            ax.plot(x, [pk[i] for i in k], label=name, **style)
            if ci:
                ax.fill_between(x, [ci[i][0] for i in k], [ci[i][1] for i in k], color=style["color"], alpha=0.15,
                                lw=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("k")
        ax.set_title(title)
    for ax in axes[:, 0]:
        ax.set_ylabel("pass@k")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    legend_below(fig, *axes[0, 0].get_legend_handles_labels(), ncol=4 if width == TEXT_WIDTH else 3)
    return save(fig, path)


def _place_labels(ax, points, names) -> None:
    """Label each point beside its marker, at the first offset that overlaps no marker, no other
    label and stays inside the axes (else the one that overlaps least). Points that coincide on
    the page share one label."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout so that display coordinates are final
    renderer = fig.canvas.get_renderer()
    xy = ax.transData.transform(points)
    pad = 4 * fig.dpi / 72  # marker half-size in pixels
    groups: list[list[int]] = []
    for i, p in enumerate(xy):
        near = next((g for g in groups if np.hypot(*(xy[g[0]] - p)) < pad), None)
        if near:
            near.append(i)
        else:
            groups.append([i])
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in xy]
    frame = ax.get_window_extent(renderer)
    offsets = [((dx * r, dy * r), ha, va) for r in (1, 2.5) for (dx, dy), ha, va in [
        ((5, 3), "left", "bottom"), ((5, -3), "left", "top"), ((-5, 3), "right", "bottom"),
        ((-5, -3), "right", "top"), ((0, 6), "center", "bottom"), ((0, -6), "center", "top")]]

    def overlap(a, b):
        return max(min(a.x1, b.x1) - max(a.x0, b.x0), 0) * max(min(a.y1, b.y1) - max(a.y0, b.y0), 0)

    for g in groups:
        label = textwrap.fill(", ".join(names[i] for i in g), 30)
        best = None
        for off, ha, va in offsets:
            t = ax.annotate(label, points[g[0]], xytext=off, textcoords="offset points", ha=ha, va=va)
            box = t.get_window_extent(renderer)
            cost = sum(overlap(box, b) for b in taken) + 10 * (box.width * box.height - overlap(box, frame))
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        taken.append(best[2])


def _err(v: float, ci: list[float]) -> list[list[float]]:
    """Error bar lengths below and above `v` (0 where a bootstrap interval excludes the mean)."""
    return [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]]


@styled
def plot_pareto(summary: dict, path: str | Path) -> list[Path] | None:
    """ID pass@1 (x) against pass@k_max on the first OOD split (y), 95% intervals as error bars,
    with the trade-off curves of summary["tradeoff"] (GRPO and SDSD at weaker updates) as lines a
    mitigation is judged against. None (nothing drawn) without an OOD split."""
    splits = ood_splits(summary)
    if not splits:
        return None
    split, names = splits[0], list(summary["methods"])
    k_id = min(next(iter(summary["methods"].values()))["id"]["pass_at_k"], key=int)
    k_ood = max((k for m in summary["methods"].values() for k in (_block(m, split)[0] or {})), key=int)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9), layout="constrained")
    points, labels = [], []
    for name, m in summary["methods"].items():
        (pk_id, ci_id), (pk_ood, ci_ood) = _block(m, None), _block(m, split)
        if not pk_ood or k_ood not in pk_ood:
            continue
        x, y = pk_id[k_id], pk_ood[k_ood]
        xerr = _err(x, ci_id[k_id]) if ci_id else None
        yerr = _err(y, ci_ood[k_ood]) if ci_ood else None
        style = method_style(name, names)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=style["marker"], color=style["color"], ms=4, capsize=2,
                    elinewidth=0.8, label=name)
        points.append((x, y))
        labels.append(name)
    # trade-off curves: base -> weaker updates (weights interpolated with the base) -> trained
    for curve_name, curve in summary.get("tradeoff", {}).get("curves", {}).items():
        pts = [(c["id"]["pass_at_k"][k_id], c["ood"][split]["pass_at_k"][k_ood]) for c in curve
               if k_ood in c["ood"].get(split, {}).get("pass_at_k", {})]
        if len(pts) > 1:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "-", color=method_style(curve_name, names)["color"], lw=1.0, alpha=0.6, zorder=0,
                    label=f"{curve_name} weaker updates")
    ax.set_xlabel(f"ID pass@{k_id}")
    ax.set_ylabel(f"OOD {split} pass@{k_ood}")
    ax.set_title(textwrap.fill(f"ID pass@{k_id} vs. OOD {split} pass@{k_ood} (95% intervals)", 55))
    ax.margins(0.15)
    _place_labels(ax, points, labels)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------
# theory.json, probe_rows.json


@styled
def plot_tilt_vs_base(curves: dict, path: str | Path) -> list[Path]:
    """SDSD's tilt E[pcmi(y; y*)] against the base probability p0(y), one line per copy strength."""
    p0, correct = np.asarray(curves["p0"]), np.asarray(curves["correct"], dtype=bool)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.7), layout="constrained")
    strengths = sorted(curves["tilt_by_strength"], key=float)
    colors = OTHERS if len(strengths) <= len(OTHERS) else plt.cm.viridis(np.linspace(0, 0.9, len(strengths)))
    order = np.argsort(p0[correct])
    handles = []
    for s, color in zip(strengths, colors):
        tau = np.asarray(curves["tilt_by_strength"][s])
        handles += ax.plot(p0[correct][order], tau[correct][order], "o-", color=color, label=f"copy strength {s}")
        ax.plot(p0[~correct], tau[~correct], "x", color=color, ms=5)
    handles += [Line2D([], [], color="grey", marker="o", ls="", label="correct y"),
                Line2D([], [], color="grey", marker="x", ls="", ms=5, label="incorrect y")]
    ax.set_xlabel("base probability p0(y)")
    ax.set_ylabel("SDSD tilt E[pcmi(y; y*)]")
    ax.set_title("SDSD's tilt favours likely outputs")
    legend_below(fig, handles, [h.get_label() for h in handles], ncol=2)
    return save(fig, path)


@styled
def plot_iterated_dynamics(curves: dict, path: str | Path) -> list[Path]:
    """Share of the top correct output under on-policy SDSD iterations, against the RL optimum."""
    share = curves["iterated_top_share"]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.5), layout="constrained")
    # in the colours of the methods they model: SDSD, and RL as GRPO
    ax.plot(range(len(share)), share, "o-", ms=3, color=FIXED["sdsd"],
            label=f"SDSD (copy strength {curves['strength']:g})")
    ax.axhline(curves["rl_top_share"], color=FIXED["grpo"], ls="--", label=f"RL optimum (beta = {curves['beta']:g})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, 1)
    ax.set_xlabel("on-policy iteration")
    ax.set_ylabel("probability of the top output")
    legend_below(fig, ncol=2)
    return save(fig, path)


@styled
def plot_marginal_bias(curves: dict, path: str | Path) -> list[Path]:
    """Bias of the two mitigations against the number of demonstrations M, plain SDSD for reference."""
    Ms = curves["Ms"]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9), layout="constrained")
    ax.plot(Ms, curves["marginal"], "o-", color=ORANGE, label="marginalised teacher")
    ax.plot(Ms, curves["cmi_pool"], "s-", color=SKY_BLUE, label="CMI reweighting, one pool of M demos")
    ax.plot(Ms, curves["cmi_mean"], "^-", color=GREEN, label="CMI reweighting, expected target")
    ax.axhline(curves["sdsd_error"], color=FIXED["sdsd"], ls="--", label="plain SDSD")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(Ms, [str(m) for m in Ms])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("demonstrations M")
    ax.set_ylabel("max log-ratio error vs p0\n(correct outputs)")
    legend_below(fig, ncol=1)
    return save(fig, path)


@styled
def plot_probe(rows: list[dict], rho: float | None, path: str | Path) -> list[Path] | None:
    """Predicted (exact tilt) against measured log shift of each (prompt, concept) share after SDSD.
    None (nothing drawn) when no row carries a measurement."""
    pts = [(r["predicted_log_shift"], r["measured_log_shift"]) for r in rows
           if r.get("predicted_log_shift") is not None and r.get("measured_log_shift") is not None]
    if not pts:
        return None
    if rho is None:
        from scipy.stats import spearmanr

        rho = float(spearmanr(*zip(*pts))[0])
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9), layout="constrained")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.scatter(*zip(*pts), s=10, alpha=0.6, color=BLUE, edgecolors="none")
    ax.set_xlabel("predicted log shift of concept share (exact tilt)")
    ax.set_ylabel("measured log shift after SDSD")
    ax.set_title(f"Spearman $\\rho$ = {rho:.2f}  ({len(pts)} prompt-concept pairs)")
    return save(fig, path)
