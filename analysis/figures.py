"""PNG + PDF figures from the JSON a run folder holds. Each `plot_*` takes the parsed JSON and an
output path; it writes PATH.png and PATH.pdf (atomically) and returns the paths written."""

from __future__ import annotations

import functools
import json
import math
import textwrap
from collections.abc import Sequence
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
    FIXED_MARKERS,
    FONT_SIZE,
    GREEN,
    ORANGE,
    OTHERS,
    RC,
    SHARPENING_LABEL,
    SHARPENING_PREFIX,
    SKY_BLUE,
    TEXT_WIDTH,
    is_sharpening,
    method_style,
    sharpening_grey,
)
from mitigate.core.io import atomic_path

matplotlib.use("Agg")  # files only, never a window
FORMATS = ("png", "pdf")
BANDS_UP_TO = 4  # pass@k draws intervals as bands for at most this many methods


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


def method_order(summary: dict, order: Sequence[str] | None) -> list[str]:
    """The names that fix each method's colour: `order` (e.g. every method of every folder of a
    paper, so a method keeps its colour across figures) or the summary's own order."""
    names = list(order or [])
    return names + [m for m in summary["methods"] if m not in names]


def sharpening_rows(summary: dict) -> list[tuple[float, str]]:
    """(temperature, method name) of the sharpening control's rows present in the summary, highest
    temperature first: from summary["sharpening"], else from names `base@t<T>`. [] without any."""
    block = summary.get("sharpening") or {}
    pairs = list(zip(block.get("temperatures", []), block.get("methods", [])))
    if not pairs:
        for name in summary["methods"]:
            try:
                pairs.append((float(name.removeprefix(SHARPENING_PREFIX)), name))
            except ValueError:
                continue
    return sorted(((float(t), n) for t, n in pairs if n in summary["methods"]), key=lambda p: -p[0])


@styled
def plot_pass_at_k(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path]:
    """pass@k against k (log2), one panel per split, 95% intervals as light bands (as thin bars
    past BANDS_UP_TO methods). Methods are dodged by a few hundredths of a doubling so that equal
    curves stay visible side by side."""
    names = method_order(summary, order)
    drawn = [m for m in names if m in summary["methods"] and not is_sharpening(m)]
    sharp = sharpening_rows(summary)
    dodge = {m: 2 ** (0.025 * (i - (len(drawn) - 1) / 2)) for i, m in enumerate(drawn)}
    panels = [("ID", None)] + [(f"OOD: {s}", s) for s in ood_splits(summary)]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    width = COLUMN_WIDTH if ncols == 1 else TEXT_WIDTH
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 1.9 * nrows + 0.5), squeeze=False, layout="constrained")
    for ax, (title, split) in zip(axes.flat, panels):
        ks = set()
        for name in drawn:
            pk, ci = _block(summary["methods"][name], split)
            if not pk:
                continue
            k = sorted(pk, key=int)
            ks.update(int(i) for i in k)
            x = [int(i) * dodge[name] for i in k]
            style = method_style(name, names)
            y = [pk[i] for i in k]
            ax.plot(x, y, label=name, **style)
            if ci and len(drawn) <= BANDS_UP_TO:
                ax.fill_between(x, [ci[i][0] for i in k], [ci[i][1] for i in k], color=style["color"], alpha=0.12,
                                lw=0)
            elif ci:  # many methods: stacked bands turn to mud; thin interval bars at the dodged k instead
                ax.errorbar(x, y, yerr=[[max(v - ci[i][0], 0) for v, i in zip(y, k)],
                                        [max(ci[i][1] - v, 0) for v, i in zip(y, k)]],
                            fmt="none", ecolor=style["color"], elinewidth=0.6, alpha=0.7)
        for j, (t, name) in enumerate(sharp):  # the sharpening control: a thin grey family, one label
            pk = _block(summary["methods"][name], split)[0]
            if not pk:
                continue
            k = sorted(pk, key=int)
            ks.update(int(i) for i in k)
            ax.plot([int(i) for i in k], [pk[i] for i in k], color=sharpening_grey(t, [p[0] for p in sharp]),
                    lw=0.7, zorder=1, label=SHARPENING_LABEL if j == 0 else f"_{SHARPENING_LABEL} T={t:g}")
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


def cap_at_one(ax) -> None:
    """Axes of probabilities end at 1 (margins would otherwise draw ticks above it)."""
    for get, put in ((ax.get_ylim, ax.set_ylim), (ax.get_xlim, ax.set_xlim)):
        lo, hi = get()
        if hi > 1.0 >= lo:
            put(lo, 1.0)


def _err(v: float, ci: list[float]) -> list[list[float]]:
    """Error bar lengths below and above `v` (0 where a bootstrap interval excludes the mean)."""
    return [[max(v - ci[0], 0.0)], [max(ci[1] - v, 0.0)]]


LABELLED_POINTS = 6  # the Pareto plot labels up to this many points beside their markers


@styled
def plot_pareto(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path] | None:
    """ID pass@1 (x) against pass@k_max on the first OOD split (y), 95% intervals as error bars,
    with the trade-off curves of summary["tradeoff"] (GRPO and SDSD at weaker updates) as lines a
    mitigation is judged against. None (nothing drawn) without an OOD split."""
    splits = ood_splits(summary)
    if not splits:
        return None
    split, names = splits[0], method_order(summary, order)
    k_id = min(next(iter(summary["methods"].values()))["id"]["pass_at_k"], key=int)
    k_ood = max((k for m in summary["methods"].values() for k in (_block(m, split)[0] or {})), key=int)
    n_points = sum(1 for n, m in summary["methods"].items()
                   if k_ood in (_block(m, split)[0] or {}) and not is_sharpening(n))
    crowded = n_points > LABELLED_POINTS  # past this, labels beside points collide: a legend below instead
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.9 + (0.12 * ((n_points + 4) // 3) if crowded else 0)),
                           layout="constrained")
    points, labels = [], []
    for name, m in summary["methods"].items():
        (pk_id, ci_id), (pk_ood, ci_ood) = _block(m, None), _block(m, split)
        if not pk_ood or k_ood not in pk_ood or is_sharpening(name):
            continue
        x, y = pk_id[k_id], pk_ood[k_ood]
        xerr = _err(x, ci_id[k_id]) if ci_id else None
        yerr = _err(y, ci_ood[k_ood]) if ci_ood else None
        style = method_style(name, names)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=style["marker"], color=style["color"], ms=4, capsize=2,
                    elinewidth=0.8, label=name, clip_on=False)  # a point at pass@k = 1 stays whole
        points.append((x, y))
        labels.append(name)
    # trade-off curves: base -> weaker updates (weights interpolated with the base) -> trained
    for curve_name, curve in summary.get("tradeoff", {}).get("curves", {}).items():
        pts = [(c["id"]["pass_at_k"][k_id], c["ood"][split]["pass_at_k"][k_ood]) for c in curve
               if k_ood in c["ood"].get(split, {}).get("pass_at_k", {})]
        if len(pts) > 1:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, ":", color=method_style(curve_name, names)["color"], lw=1.2, alpha=0.8, zorder=0,
                    label=f"{curve_name}, weaker updates")
    # sharpening control: base and the base at lower temperatures, ordered by ID pass@1
    sharp = [n for _, n in sharpening_rows(summary)]
    pts = [(_block(summary["methods"][n], None)[0][k_id], _block(summary["methods"][n], split)[0][k_ood])
           for n in (["base"] if "base" in summary["methods"] else []) + sharp
           if k_ood in (_block(summary["methods"][n], split)[0] or {})]
    if sharp and len(pts) > 1:
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, "-", color="0.55", lw=0.9, marker=".", ms=4, zorder=0,
                label="sharpening (base at lower T)")
    ax.set_xlabel(f"ID pass@{k_id}")
    ax.set_ylabel(f"OOD {split} pass@{k_ood}")
    # two lines broken between phrases (never mid-phrase by a wrap at the column's width)
    ax.set_title(f"ID pass@{k_id} vs. OOD pass@{k_ood} ({split})\nbars: 95% intervals")
    ax.margins(0.15)
    cap_at_one(ax)
    if crowded:  # a compact legend: three columns, smaller text, so it stays smaller than the plot
        handles, names_ = ax.get_legend_handles_labels()
        fig.legend(handles, names_, loc="outside lower center", ncol=3, fontsize=FONT_SIZE - 2,
                   handlelength=1.6, columnspacing=0.8, handletextpad=0.4)
    else:
        _place_labels(ax, points, labels)
        lines = [(h, lab) for h, lab in zip(*ax.get_legend_handles_labels()) if isinstance(h, Line2D)]
        if lines:  # the curves (trade-off, sharpening) are named below; the points beside themselves
            legend_below(fig, *map(list, zip(*lines)), ncol=2)
    return save(fig, path)


DIVERSITY = (("concepts_at_r", "concepts among {r} correct"), ("concepts", "concepts among correct"),
             ("semantic_clusters", "semantic clusters (correct)"), ("lexical_clusters", "lexical clusters (correct)"))


@styled
def plot_diversity_vs_accuracy(summary: dict, path: str | Path, order: Sequence[str] | None = None
                               ) -> list[Path] | None:
    """Diversity among correct samples (the first measure of DIVERSITY every method reports; the
    accuracy-free one first) against ID pass@1, one point per method with 95% intervals: a model up
    and to the left of the base gained accuracy by narrowing. None without a diversity measure."""
    methods = summary["methods"]
    key = next((k for k, _ in DIVERSITY if all(isinstance(m["id"].get(k), (int, float)) for m in methods.values())),
               None)
    if key is None:
        return None
    label = dict(DIVERSITY)[key].format(r=summary.get("diversity_r"))
    names = method_order(summary, order)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6 + 0.12 * ((len(methods) + 2) // 3)), layout="constrained")
    for name, m in methods.items():
        if is_sharpening(name):
            continue
        x, y = m["id"]["pass_at_k"]["1"], m["id"][key]
        ci = m.get("ci95", {}).get("id", {})
        xerr = _err(x, ci["pass_at_k"]["1"]) if "pass_at_k" in ci else None
        yerr = _err(y, ci[key]) if key in ci else None
        style = method_style(name, names)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=style["marker"], color=style["color"], ms=4, capsize=2,
                    elinewidth=0.8, label=name, clip_on=False)
    ax.set_xlabel("ID pass@1")
    ax.set_ylabel(label)
    ax.set_title("diversity against accuracy\nbars: 95% intervals")
    ax.margins(0.15)
    cap_at_one(ax)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=FONT_SIZE - 1)
    return save(fig, path)


RICHNESS = ("none", "answer", "answer_verdict", "partial", "full")  # what the teacher sees, poorest first


def context_rows(summary: dict) -> dict[str, list[tuple[str, str]]]:
    """{teacher family: [(context kind, method)]} of the SDSD-family methods, from the objective
    records of the summary's budget (a record without `teacher_context` is the full demonstration);
    the family is the objective and the teacher's weights: self, or each external checkpoint by its
    path (two external teachers are two lines, not one)."""
    out: dict[str, list] = {}
    for method, record in summary.get("budget", {}).get("objectives", {}).items():
        if method not in summary["methods"] or "teacher" not in record:
            continue
        teacher = "self teacher"
        if record["teacher"] == "external":
            path = record.get("teacher_path")
            teacher = f"teacher {Path(path).name}" if path else "external teacher"
        family = f"{record['name']}, {teacher}"
        out.setdefault(family, []).append((record.get("teacher_context", "full"), method))
    return {f: sorted(rows, key=lambda r: RICHNESS.index(r[0])) for f, rows in out.items()
            if len({k for k, _ in rows}) > 1}


@styled
def plot_context_richness(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path] | None:
    """OOD accuracy (pass@kmax, one panel per OOD split) and ID concepts against what the teacher
    sees (none < answer < answer and verdict < partial < full demonstration), one line per teacher
    family, 95% intervals as bars. None when no family has two context kinds."""
    families = context_rows(summary)
    if not families:
        return None
    names = method_order(summary, order)
    first = next(iter(summary["methods"].values()))
    panels = [(f"OOD {s} pass@{max(first['ood'][s]['pass_at_k'], key=int)}",
               ("ood", s, "pass_at_k", max(first["ood"][s]["pass_at_k"], key=int))) for s in ood_splits(summary)]
    concept = "concepts_at_r" if isinstance(first["id"].get("concepts_at_r"), (int, float)) else "concepts"
    panels.append((f"ID {concept.replace('_', ' ')}", ("id", concept)))
    fig, axes = plt.subplots(1, len(panels), figsize=(TEXT_WIDTH if len(panels) > 1 else COLUMN_WIDTH, 2.3),
                             squeeze=False, layout="constrained")
    for ax, (label, key) in zip(axes[0], panels):
        for family, rows in families.items():
            xs, ys, errs = [], [], [[], []]
            for kind, method in rows:
                m = summary["methods"][method]
                v, ci = m, m.get("ci95", {})
                for p in key:
                    v, ci = v[p], (ci.get(p, {}) if isinstance(ci, dict) else {})
                xs.append(RICHNESS.index(kind))
                ys.append(v)
                e = _err(v, ci) if isinstance(ci, list) else [[0.0], [0.0]]
                errs[0].append(e[0][0])
                errs[1].append(e[1][0])
            style = method_style(rows[-1][1], names)
            ax.errorbar(xs, ys, yerr=errs, color=style["color"], marker=style["marker"], ms=4, capsize=2,
                        elinewidth=0.8, lw=1.0, label=family)
        ax.set_xticks(range(len(RICHNESS)), ["none", "answer", "answer+\nverdict", "partial", "full"])
        ax.set_title(label)
        ax.set_xlabel("teacher context (richer ->)")
    legend_below(fig, *axes[0, 0].get_legend_handles_labels(), ncol=2)
    return save(fig, path)


PAIRED_REFS = ("grpo", "sdsd")  # the references of the headline figure, in this order


def _top_k(pk: dict) -> str:
    return max(pk, key=int)


def headline_metrics(summary: dict) -> list[tuple[str, tuple]]:
    """(label, path into a paired block) of the headline metrics: ID pass@1, ID pass@k_max, ID
    accuracy-free concepts (`concepts_at_r`; `concepts` in a summary without it) and each OOD
    split's pass@k_max. k_max: the largest k every (non-sharpening) method measured."""
    trained = [m for n, m in summary["methods"].items() if not is_sharpening(n)] or list(summary["methods"].values())
    k_id = str(min(int(_top_k(m["id"]["pass_at_k"])) for m in trained))
    out = [("ID pass@1", ("id", "pass_at_k", "1"))]
    if k_id != "1":
        out.append((f"ID pass@{k_id}", ("id", "pass_at_k", k_id)))
    if any("concepts_at_r" in m["id"] for m in trained):
        out.append((f"ID concepts@{summary.get('diversity_r', 'r')}", ("id", "concepts_at_r")))
    elif any("concepts" in m["id"] for m in trained):
        out.append(("ID concepts", ("id", "concepts")))
    for split in ood_splits(summary):
        pks = [m["ood"][split]["pass_at_k"] for m in trained if split in m.get("ood", {})]
        if pks:
            k = str(min(int(_top_k(pk)) for pk in pks))
            out.append((f"{split} pass@{k}", ("ood", split, "pass_at_k", k)))
    return out


def paired_rows(summary: dict, order: Sequence[str] | None = None) -> list[str]:
    """The rows of the paired-difference figure: every trained method with a paired block, then
    the base and the sharpening rows (highest temperature first). A reference is left out when
    its only difference mirrors one already drawn (GRPO vs SDSD is drawn as SDSD vs GRPO)."""
    methods = summary["methods"]

    def mirrored(name: str) -> bool:
        refs = [r for r in methods[name].get("paired", {}) if r in PAIRED_REFS]
        return name in PAIRED_REFS and all(PAIRED_REFS.index(r) > PAIRED_REFS.index(name)
                                           and name in methods.get(r, {}).get("paired", {}) for r in refs)

    has = [m for m in method_order(summary, order) if m in methods
           and any(r in methods[m].get("paired", {}) for r in PAIRED_REFS) and not mirrored(m)]
    sharp = [n for _, n in sharpening_rows(summary)]
    trained = [m for m in has if m != "base" and m not in sharp]
    return trained + [m for m in ["base", *sharp] if m in has]


def _excludes_zero(ci) -> bool:
    return ci is not None and all(_finite(v) for v in ci) and (ci[0] > 0 or ci[1] < 0)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


REF_LABELS = {"grpo": "GRPO", "sdsd": "SDSD"}


@styled
def plot_paired_differences(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path] | None:
    """The headline figure: each method minus GRPO and minus SDSD (paired over prompts and seeds),
    with the 95% paired interval, one panel per headline metric (`headline_metrics`). A marker is
    filled when its interval excludes 0, hollow when it does not. Trained methods first, then the
    base and the sharpening rows below a thin line. None when no method has a paired block."""
    rows = paired_rows(summary, order)
    if not rows:
        return None
    metrics = headline_metrics(summary)
    refs = [r for r in PAIRED_REFS if any(r in summary["methods"][m].get("paired", {}) for m in rows)]
    offsets = {r: 0.0 if len(refs) == 1 else 0.34 * (i / (len(refs) - 1) - 0.5) for i, r in enumerate(refs)}
    ncols = min(len(metrics), 3)
    nrows = math.ceil(len(metrics) / ncols)
    width = COLUMN_WIDTH if ncols <= 2 else TEXT_WIDTH
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * (0.17 * len(rows) + 0.55) + 0.45), sharey=True,
                             squeeze=False, layout="constrained")
    y = np.arange(len(rows))
    n_trained = sum(1 for m in rows if m != "base" and not is_sharpening(m))
    for ax, (label, mpath) in zip(axes.flat, metrics):
        ax.axvline(0, color="0.3", lw=0.6, zorder=0)
        for i, name in enumerate(rows):
            for ref in refs:
                d = summary["methods"][name].get("paired", {}).get(ref)
                try:
                    cell = _at(d, mpath)
                except (KeyError, TypeError):
                    continue
                v, ci = cell.get("mean"), cell.get("ci95")
                if not _finite(v):
                    continue
                color = FIXED[ref] if ref in FIXED else "0.3"
                filled = _excludes_zero(ci)
                err = np.array(_err(v, ci)) if ci and all(_finite(c) for c in ci) else None
                ax.errorbar([v], [i + offsets[ref]], xerr=err, fmt=FIXED_MARKERS.get(ref, "o"), color=color, ms=3.5,
                            mfc=color if filled else "none", mec=color, mew=0.8, elinewidth=0.8, capsize=1.5,
                            label=f"{name} - {ref}")
        if 0 < n_trained < len(rows):
            ax.axhline(n_trained - 0.5, color="0.6", lw=0.5)
        ax.set_title(label)
        ax.grid(axis="y", visible=False)
    for ax in axes[-1]:
        ax.set_xlabel("difference")
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(y, rows)
    axes[0, 0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    handles = [Line2D([], [], color=FIXED.get(r, "0.3"), marker=FIXED_MARKERS.get(r, "o"), ls="",
                      label=f"minus {REF_LABELS.get(r, r)}") for r in refs]
    handles += [Line2D([], [], color="0.3", marker="o", ls="", label="95% interval excludes 0"),
                Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label="includes 0")]
    legend_below(fig, handles, [h.get_label() for h in handles], ncol=4)
    return save(fig, path)


def _concept_order(summary: dict) -> list[str]:
    """Concept labels, most preferred by the base first (else by the share over all methods)."""
    ref = summary["methods"].get("base", {}).get("label_shares", {}).get("id") or {}
    total: dict[str, float] = {}
    for m in summary["methods"].values():
        shares = m.get("label_shares", {})
        for block in [shares.get("id", {}), *shares.get("ood", {}).values()]:
            for k, v in block.items():
                total[k] = total.get(k, 0.0) + v
    return sorted(total, key=lambda k: (-ref.get(k, 0.0), -total[k], int(k) if k.isdigit() else k))


@styled
def plot_concept_shares(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path] | None:
    """Share of each concept (graph task: community) among each method's correct samples, one
    panel per prompt distribution (ID and each OOD split), one stacked bar per method, base on
    top. Concepts are ordered by the base's preference and coloured on a colour-blind-safe
    sequential scale (darkest = the base's favourite). None when no method has label shares."""
    names = [m for m in method_order(summary, order) if summary["methods"].get(m, {}).get("label_shares")]
    if not names:
        return None
    concepts = _concept_order(summary)
    colors = dict(zip(concepts, plt.cm.cividis(np.linspace(0.0, 0.92, max(len(concepts), 2)))))
    panels = [("ID", None)] + [(s, s) for s in ood_splits(summary)]
    fig, axes = plt.subplots(1, len(panels), figsize=(COLUMN_WIDTH, 0.17 * len(names) + 1.1), sharey=True,
                             squeeze=False, layout="constrained")
    y = np.arange(len(names))
    for ax, (title, split) in zip(axes[0], panels):
        left = np.zeros(len(names))
        for c in concepts:
            w = np.array([(summary["methods"][n]["label_shares"]["id"] if split is None else
                           summary["methods"][n]["label_shares"].get("ood", {}).get(split, {})).get(c, 0.0)
                          for n in names])
            ax.barh(y, w, left=left, color=colors[c], height=0.75, lw=0, label=f"concept {c}")
            left += w
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.5, 1], ["0", ".5", "1"])
        ax.grid(False)
        ax.set_title(textwrap.fill(title.replace("_", " "), 12))
    axes[0, 0].set_yticks(y, names)
    axes[0, 0].invert_yaxis()
    axes[0, len(panels) // 2].set_xlabel("share of correct samples")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend_below(fig, handles, labels, ncol=min(len(concepts), 5))
    return save(fig, path)


DYNAMICS = (("reward", "reward"), ("probe_pass_at_1", "probe pass@1"), ("probe_concepts", "probe concepts"),
            ("token_entropy", "token entropy"), ("kl_base", "KL to base"))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (a torn last line, from a killed run, is skipped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def dynamics_of(folder: Path, summary: dict) -> dict[str, list[list[dict]]]:
    """{method: [metrics rows of each seed]} of the trained runs a summary's folder keeps
    (`<method>-seed<s>/metrics.jsonl`); methods without any are left out."""
    out = {}
    for name, m in summary["methods"].items():
        runs = [Path(folder) / f"{name}-seed{s}" / "metrics.jsonl" for s in m.get("seeds", [])]
        rows = [read_metrics(p) for p in runs if p.is_file()]
        if rows and name != "base":
            out[name] = rows
    return out


COLLAPSE = (("probe_pass_at_1", "probe pass@1"), ("probe_pass_at_n", "probe pass@n"),
            ("probe_concepts_at_r", "probe concepts@r"))
COLLAPSE_NEW = ("probe_pass_at_n", "probe_concepts_at_r")  # without either, the figure adds nothing


def _present(runs: dict[str, list[list[dict]]], key: str) -> bool:
    return any(r.get(key) is not None for seeds in runs.values() for rows in seeds for r in rows)


@styled
def plot_training_dynamics(runs: dict[str, list[list[dict]]], path: str | Path,
                           order: Sequence[str] | None = None, metrics: Sequence[tuple[str, str]] = DYNAMICS,
                           ncols: int = 2) -> list[Path] | None:
    """Reward, probe pass@1, probe concepts, token entropy and KL to the base (or `metrics`:
    (key, label) pairs) against the training step: the mean over seeds as a line, the range over
    seeds as a band (up to BANDS_UP_TO methods). A key no run logged gets no panel. None without data."""
    keys = [(k, label) for k, label in metrics if _present(runs, k)]
    if not keys:
        return None
    names = list(order or []) + [m for m in runs if m not in (order or [])]
    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 1.25 * nrows + 0.9), squeeze=False, sharex=True,
                             layout="constrained")
    for ax, (key, label) in zip(axes.flat, keys):
        for name in [n for n in names if n in runs]:
            per_seed = [{r["step"]: r[key] for r in rows if key in r and r[key] is not None} for rows in runs[name]]
            steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
            if not steps:
                continue
            v = np.array([[d[t] for t in steps] for d in per_seed], dtype=float)
            style = method_style(name, names)
            # markers (every sixth of the steps, staggered per method) tell overlapping lines apart in
            # grey; the fixed references (grpo, sdsd) are drawn on top of the mitigations
            every = max(1, len(steps) // 6)
            j = names.index(name)
            ax.plot(steps, v.mean(0), color=style["color"], ls=style["linestyle"], lw=1.0 if name in FIXED else 0.8,
                    label=name, marker=style["marker"], ms=2.5, markevery=(j % every, every),
                    zorder=3 if name in FIXED else 2, alpha=1.0 if name in FIXED else 0.85)
            if len(per_seed) > 1 and len(runs) <= BANDS_UP_TO:  # more bands than that stack into mud
                ax.fill_between(steps, v.min(0), v.max(0), color=style["color"], alpha=0.12, lw=0)
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for col in range(ncols):  # the lowest drawn panel of each column carries the step axis
        bottom = [ax for ax in axes[:, col] if ax.get_visible()][-1]
        bottom.set_xlabel("training step")
        bottom.tick_params(labelbottom=True)
    handles: dict = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    legend_below(fig, list(handles.values()), list(handles), ncol=3)
    return save(fig, path)


def plot_collapse_over_training(runs: dict[str, list[list[dict]]], path: str | Path,
                                order: Sequence[str] | None = None) -> list[Path] | None:
    """The collapse over training: probe pass@1, probe pass@n (n = the probe's samples) and the
    accuracy-free probe concepts@r against the step, per method, mean over seeds with the range
    over seeds as a band. None for runs that logged neither pass@n nor concepts@r (older runs)."""
    if not any(_present(runs, k) for k in COLLAPSE_NEW):
        return None
    return plot_training_dynamics(runs, path, order, COLLAPSE, ncols=3)


def sweep_axes(summary: dict) -> dict[str, list[list[str]]]:
    """{numeric parameter: [groups of settings]}: the settings that differ only in that parameter
    (each group with at least two of its values), from the summary's `sweep` block."""
    varying = summary.get("sweep", {}).get("varying", {})
    params = list(dict.fromkeys(k for v in varying.values() for k in v))
    out = {}
    for p in params:
        if not all(isinstance(v.get(p), (int, float)) and not isinstance(v.get(p), bool)
                   for v in varying.values() if v.get(p) is not None):
            continue
        groups: dict[str, list[str]] = {}
        for name, v in varying.items():
            if isinstance(v.get(p), (int, float)):
                rest = json.dumps({k: x for k, x in v.items() if k != p}, sort_keys=True)
                groups.setdefault(rest, []).append(name)
        keep = [g for g in groups.values() if len({varying[n][p] for n in g}) > 1]
        if keep:
            out[p] = keep
    return out


def _sweep_metrics(summary: dict) -> list[tuple[str, tuple]]:
    first = next(iter(summary["methods"].values()))
    out = [("ID pass@1", ("id", "pass_at_k", "1"))]
    out += [("ID concepts", ("id", "concepts"))] if "concepts" in first["id"] else []
    for s in ood_splits(summary):
        k = max(first["ood"][s]["pass_at_k"], key=int)
        out.append((f"{s} pass@{k}", ("ood", s, "pass_at_k", k)))
    return out


def _at(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


GROUP_LINES = ("-", "--", ":", "-.")


@styled
def plot_sweep(summary: dict, path: str | Path, order: Sequence[str] | None = None) -> list[Path]:
    """Metric against each numeric parameter of a sweep (`sweep_<parameter>.png/.pdf` beside
    `path`), 95% intervals as error bars, each setting in its method colour, one grey line per
    group of settings that differ only in that parameter, the base as a dashed black line. []
    for a summary without a sweep axis."""
    written = []
    names = method_order(summary, order)
    metrics = _sweep_metrics(summary)
    base = summary["methods"].get("base")
    varying = summary["sweep"]["varying"]
    for param, groups in sweep_axes(summary).items():
        ncols = 2 if len(metrics) > 1 else 1
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 1.3 * nrows + 0.9), squeeze=False,
                                 layout="constrained")
        xs_all = [varying[n][param] for g in groups for n in g]
        log = min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
        for ax, (label, mpath) in zip(axes.flat, metrics):
            for gi, group in enumerate(groups):
                g = sorted(group, key=lambda n: varying[n][param])
                x = [varying[n][param] for n in g]
                y = [_at(summary["methods"][n], mpath) for n in g]
                ci = [_at(summary["methods"][n]["ci95"], mpath) for n in g]
                err = [[max(v - c[0], 0.0) for v, c in zip(y, ci)], [max(c[1] - v, 0.0) for v, c in zip(y, ci)]]
                rest = {k: v for k, v in varying[g[0]].items() if k != param}
                # fields a setting's objective lacks are None: they say nothing about the group
                name = ", ".join(f"{k.removeprefix('train.')}={v}" for k, v in rest.items()
                                 if v is not None) or "settings"
                ax.plot(x, y, color="0.45", ls=GROUP_LINES[gi % len(GROUP_LINES)], lw=0.9, zorder=1,
                        label=textwrap.fill(name, 45))
                for xi, yi, lo, hi, n in zip(x, y, *err, g):  # each setting in its method colour
                    style = method_style(n, names)
                    ax.errorbar([xi], [yi], yerr=[[lo], [hi]], fmt=style["marker"], color=style["color"], ms=3.5,
                                capsize=2, elinewidth=0.7, zorder=2, label=n)
            if base is not None:
                ax.axhline(_at(base, mpath), color=FIXED["base"], ls="--", lw=0.8, label="base")
            if log:
                ax.set_xscale("log")
            ax.set_ylabel(label)
        for ax in axes[-1]:
            ax.set_xlabel(param.removeprefix("train."))
        for ax in axes.flat[len(metrics):]:
            ax.set_visible(False)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        legend_below(fig, handles, labels, ncol=1 if len(groups) > 2 else 3)
        stem = Path(path)
        written += save(fig, stem.with_name(f"{stem.name}_{_file_part(param)}"))
    return written


def _file_part(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.removeprefix("train.")).strip("_")


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
