"""One look for every figure: the Okabe-Ito palette (colour-blind safe) extended by four dark
colours of Paul Tol's colour-blind-safe "muted" scheme, a fixed colour and marker per method (every
method of a figure its own marker, so methods stay apart in grey print), paper-column sizes and
8 pt text. The sharpening control's rows (`base@t<T>`: the base
sampled at a lower temperature) are a grey family that takes no colour from the methods."""

from __future__ import annotations

from collections.abc import Sequence

# Okabe & Ito (2008), "Color Universal Design".
BLACK, ORANGE, SKY_BLUE, GREEN = "#000000", "#E69F00", "#56B4E9", "#009E73"
YELLOW, BLUE, VERMILLION, PURPLE = "#F0E442", "#0072B2", "#D55E00", "#CC79A7"

# Tol (2021), "Colour Schemes", muted: wine, teal, olive, indigo (apart from Okabe-Ito's and each other)
WINE, TEAL, OLIVE, INDIGO = "#882255", "#44AA99", "#999933", "#332288"

FIXED = {"base": BLACK, "grpo": VERMILLION, "sdsd": BLUE}
OTHERS = (ORANGE, SKY_BLUE, GREEN, PURPLE, WINE, TEAL, OLIVE, INDIGO, YELLOW)  # yellow last: faintest on white
FIXED_MARKERS = {"base": "o", "grpo": "s", "sdsd": "^"}
MARKERS = "DvpP<>hX*"  # the others, in the same order as their colours: twelve methods, twelve markers

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
TEXT_WIDTH = 6.9  # inches: both columns
FONT_SIZE = 8

RC = {
    "font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1, "legend.fontsize": FONT_SIZE - 1,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "axes.linewidth": 0.6, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
    "savefig.dpi": 300,
}


SHARPENING_PREFIX = "base@t"  # rows of the sharpening control: base@t0.8, base@t0.6, ...
SHARPENING_LABEL = "base, lower T"
GREY_DARK, GREY_LIGHT = 0.3, 0.75  # grey levels of the highest and the lowest sharpening temperature


def is_sharpening(name: str) -> bool:
    """A row of the sharpening control (the base at a lower temperature, no training)."""
    return str(name).startswith(SHARPENING_PREFIX)


def sharpening_grey(t: float, temperatures: Sequence[float]) -> str:
    """Grey of temperature `t` within its family: lighter for a lower temperature."""
    lo, hi = min(temperatures), max(temperatures)
    frac = 0.0 if hi == lo else (hi - t) / (hi - lo)
    return str(round(GREY_DARK + (GREY_LIGHT - GREY_DARK) * frac, 3))


def _coloured(order: Sequence[str]) -> list[str]:
    return [m for m in order if m not in FIXED and not is_sharpening(m)]


def method_color(name: str, order: Sequence[str]) -> str:
    """base, grpo and sdsd always get the same colour; every other method the next free colour in
    the order it has among the non-fixed names of `order` (the summary's method order). Sharpening
    rows are mid grey (the figures shade them by temperature) and take no colour from the others."""
    if name in FIXED:
        return FIXED[name]
    if is_sharpening(name):
        return "0.5"
    others = _coloured(order)
    if name not in others:
        raise ValueError(f"method '{name}' is not in {list(order)}")
    return OTHERS[others.index(name) % len(OTHERS)]


def method_style(name: str, order: Sequence[str]) -> dict:
    """Colour, marker and line style of a method, fixed like its colour: up to twelve methods each
    have their own colour and marker; past that, a dashed line tells apart two that share them."""
    color = method_color(name, order)
    if name in FIXED:
        return {"color": color, "marker": FIXED_MARKERS[name], "linestyle": "-"}
    if is_sharpening(name):
        return {"color": color, "marker": ".", "linestyle": ":"}
    j = _coloured(order).index(name)
    return {"color": color, "marker": MARKERS[j % len(MARKERS)], "linestyle": "--" if j >= len(OTHERS) else "-"}
