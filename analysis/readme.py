"""Numbers in Markdown that cannot drift from their runs: `python -m analysis readme FILE.md`
rewrites every generated block of FILE.md from the summary.json it names; `--check` writes nothing
and exits 1 (printing a diff) when a block differs from what its summary gives.

A block, in the Markdown source (the summary path relative to the repository root):

    <!-- mitigate:table KIND SUMMARY_JSON [key=value ...] -->
    ... generated: never edit by hand ...
    <!-- /mitigate:table -->

KIND
    main     per method: seeds, ID pass@1, ID pass@k_max, ID concepts, ID concepts@r (when the
             summary has it), each OOD split's pass@k_max; mean [95% interval]
    paired   each method minus `ref=` (default grpo), same columns; bold where the paired 95%
             interval excludes 0
    ratio    the ratio test: slope and KL(model | correct || base | correct) per method, and their
             paired differences against each reference (or `ref=`), bold where they exclude 0
    primary  the pre-registered primary endpoints with their Holm-adjusted p-values and conclusions
Options: `ref=NAME` (paired, ratio), `methods=a,b,c` (the rows and their order; default: all).
All numbers with 3 decimals.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.tables import Cell, cell_text, md_escape

ROOT = Path(__file__).resolve().parents[1]  # the repository: block paths are relative to it
DECIMALS = 3
REFS = ("grpo", "sdsd")  # reference columns come in this order, then any other
OPEN = re.compile(r"^<!-- mitigate:table (?P<args>.*?) -->[ \t]*$", re.M)
CLOSE = "<!-- /mitigate:table -->"


class ReadmeError(ValueError):
    """A block that cannot be generated: bad syntax, unknown kind, missing summary."""


# ---------------------------------------------------------------------------------------------
# cells and tables


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _excludes_zero(ci) -> bool:
    return ci is not None and len(ci) == 2 and all(_finite(v) for v in ci) and (ci[0] > 0 or ci[1] < 0)


def value_cell(mean, ci=None, signed: bool = False, bold_if_excludes_zero: bool = False) -> str:
    """`0.688 [0.600, 0.750]` (signed: `+0.012 [-0.020, +0.040]`), bold where asked and the
    interval excludes 0; n/a for a missing or non-finite value."""
    if not _finite(mean):
        return "n/a"
    ci = list(ci) if ci is not None and len(ci) == 2 and all(_finite(v) for v in ci) else None
    bold = bold_if_excludes_zero and _excludes_zero(ci)
    return cell_text(Cell(mean=float(mean), ci=ci, decimals=DECIMALS, signed=signed, bold=bold), "ci", latex=False)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table: the first `left` columns left-aligned (names), the others right-aligned."""
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---" if j < left else "--:" for j in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _get(tree, path: Sequence[str]):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _select(names: Sequence[str], options: dict) -> list[str]:
    wanted = [m for m in options.get("methods", "").split(",") if m]
    if not wanted:
        return list(names)
    missing = [m for m in wanted if m not in names]
    if missing:
        raise ReadmeError(f"methods={options['methods']}: {', '.join(missing)} not in the summary "
                          f"(it has {', '.join(names)})")
    return wanted


def columns(summary: dict) -> list[tuple[str, tuple]]:
    """(header, path into a method entry) of the headline columns: ID pass@1, ID pass@k_max, ID
    concepts, ID concepts@r (when present), each OOD split's pass@k_max. k_max: the largest k every
    method measured on that block."""
    methods = list(summary["methods"].values())

    def top(path: tuple) -> str | None:
        ks = [_get(m, path) for m in methods]
        if not ks or any(not k for k in ks):
            return None
        return str(min(max(int(k) for k in pk) for pk in ks))

    out = [("ID pass@1", ("id", "pass_at_k", "1"))]
    k = top(("id", "pass_at_k"))
    if k and k != "1":
        out.append((f"ID pass@{k}", ("id", "pass_at_k", k)))
    r = summary.get("diversity_r", "r")
    for key, label in (("concepts", "ID concepts"), ("concepts_at_r", f"ID concepts@{r}")):
        if any(key in m.get("id", {}) for m in methods):
            out.append((label, ("id", key)))
    splits = list(dict.fromkeys(s for m in methods for s in m.get("ood", {})))
    for s in splits:
        k = top(("ood", s, "pass_at_k"))
        if k:
            out.append((f"{s} pass@{k}", ("ood", s, "pass_at_k", k)))
    return out


def main_table(summary: dict, options: dict) -> str:
    cols = columns(summary)
    rows = []
    for name in _select(list(summary["methods"]), options):
        m = summary["methods"][name]
        rows.append([md_escape(name), str(len(m.get("seeds", [])))]
                    + [value_cell(_get(m, p), _get(m.get("ci95", {}), p)) for _, p in cols])
    return markdown_table(["method", "seeds"] + [h for h, _ in cols], rows, left=1)


def paired_table(summary: dict, options: dict) -> str:
    ref = options.get("ref", "grpo")
    cols = columns(summary)
    names = [n for n in _select(list(summary["methods"]), options)
             if ref in summary["methods"][n].get("paired", {})]
    if not names:
        return f"_No paired differences against {md_escape(ref)} in this summary._"
    rows = []
    for name in names:
        d = summary["methods"][name]["paired"][ref]
        rows.append([md_escape(name)] + [value_cell(_get(d, p + ("mean",)), _get(d, p + ("ci95",)), signed=True,
                                                    bold_if_excludes_zero=True) for _, p in cols])
    return markdown_table([f"method − {ref}"] + [h for h, _ in cols], rows)


def ratio_table(summary: dict, options: dict) -> str:
    block = (summary.get("ratio_test") or {}).get("methods") or {}
    if not block:
        return "_No ratio test in this summary._"
    names = _select(list(block), options)
    found = list(dict.fromkeys(r for n in names for r in (block[n].get("paired") or {})))
    refs = [options["ref"]] if "ref" in options else sorted(found, key=lambda r: (r not in REFS, REFS.index(r)
                                                                                   if r in REFS else 0))
    header = ["method", "slope", "partial slope", "sharpening", "KL(correct)"]
    for r in refs:
        header += [f"slope − {r}", f"partial − {r}"]
    rows = []
    for name in names:
        m = block[name]
        row = [md_escape(name), value_cell(m.get("slope"), m.get("ci95")),
               value_cell(m.get("partial_slope"), m.get("partial_ci95")),
               value_cell(m.get("sharpening"), m.get("sharpening_ci95")),
               value_cell(m.get("kl_correct"), m.get("kl_ci95"))]
        for r in refs:
            p = (m.get("paired") or {}).get(r) or {}
            for key in ("slope", "partial_slope"):
                c = p.get(key) or {}
                row.append(value_cell(c.get("mean"), c.get("ci95"), signed=True, bold_if_excludes_zero=True)
                           if c else "")
        rows.append(row)
    return markdown_table(header, rows)


def _p(x) -> str:
    if not _finite(x):
        return "n/a"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def primary_table(summary: dict, options: dict) -> str:
    """The primary family; with `task=SEED` on a pooled summary, that task seed's own family (its own
    Holm correction), the per-task consistency check of a pre-registration."""
    block = summary.get("primary") or {}
    if "task" in options:
        seeds = [str(t) for t in summary.get("pooled_task_seeds") or []]
        if options["task"] not in seeds or not block.get("per_task"):
            raise ReadmeError(f"task={options['task']}: not a task seed of this pooled summary "
                              f"(task seeds: {', '.join(seeds) or 'none, not a pooled summary'})")
        block = block["per_task"][seeds.index(options["task"])] or {}
    tests = block.get("tests") or []
    if not tests:
        return "_No primary endpoints in this summary._"
    header = ["endpoint", "method", "reference", "split", "metric", "direction", "margin", "difference",
              "p", "p (Holm)", "holds"]
    rows = []
    for t in tests:
        margin = t.get("margin")
        rows.append([md_escape(t.get("name", "")), md_escape(t.get("method", "")), md_escape(t.get("reference", "")),
                     md_escape(t.get("split", "")), md_escape(t.get("metric", "")), md_escape(t.get("direction", "")),
                     f"{margin:.{DECIMALS}f}" if _finite(margin) else md_escape(margin if margin is not None else ""),
                     value_cell(t.get("mean"), t.get("ci95"), signed=True), _p(t.get("p_value")),
                     _p(t.get("p_holm")), "**yes**" if t.get("holds") else "no"])
    return markdown_table(header, rows, left=6)


def _gap_rows(gaps: dict, names: list[str]) -> list[list[str]]:
    """Rows (method, curve, metric, gap [CI], share outside) of a `gaps_above` block; bold where the
    interval excludes 0 and fewer than 5% of replicates fall outside the curve's range."""
    rows = []
    for name in names:
        for curve, by_metric in gaps.get(name, {}).items():
            for metric, g in by_metric.items():
                ok = g.get("outside_share", 1.0) < 0.05
                rows.append([md_escape(name), md_escape(curve), md_escape(metric),
                             value_cell(g.get("median"), g.get("ci95"), signed=True, bold_if_excludes_zero=ok),
                             f"{g.get('outside_share', float('nan')):.2f}"])
    return rows


def _gaps_table(summary: dict, block: str, options: dict, absent: str) -> str:
    gaps = (summary.get(block) or {}).get("gaps_above") or {}
    if not gaps:
        return f"_No {absent} in this summary._"
    return markdown_table(["method", "curve", "metric", "gap above the curve", "outside range"],
                          _gap_rows(gaps, _select(list(gaps), options)), left=3)


def sharpening_table(summary: dict, options: dict) -> str:
    """Each trained method's gap above the sharpening curve (the base at lower temperatures)."""
    return _gaps_table(summary, "sharpening", options, "sharpening control")


def tradeoff_table(summary: dict, options: dict) -> str:
    """Each method's gap above the trade-off curves (GRPO's and SDSD's weaker updates)."""
    return _gaps_table(summary, "tradeoff", options, "trade-off curves")


def per_task_table(summary: dict, options: dict) -> str:
    """A pooled summary (`mitigate table --pool-tasks`): method minus `ref` on the headline columns,
    pooled over task seeds (third bootstrap level) and then on each task seed alone."""
    ref = options.get("ref", "grpo")
    if "pooled_task_seeds" not in summary:
        return "_Not a pooled summary (mitigate table --pool-tasks)._"
    cols = columns(summary)
    names = [n for n in _select(list(summary["methods"]), options) if ref in summary["methods"][n].get("paired", {})]
    rows = []
    for name in names:
        m = summary["methods"][name]
        by_task = [("pooled", m["paired"][ref])] + [(str(t["task_seed"]), t["paired"][ref]) for t in m["per_task"]]
        for label, d in by_task:
            rows.append([md_escape(name), label] + [value_cell(_get(d, p + ("mean",)), _get(d, p + ("ci95",)),
                                                               signed=True, bold_if_excludes_zero=True)
                                                    for _, p in cols])
    return markdown_table([f"method − {ref}", "task seed"] + [h for h, _ in cols], rows, left=2)


KINDS: dict[str, Callable[[dict, dict], str]] = {"main": main_table, "paired": paired_table, "ratio": ratio_table,
                                                 "primary": primary_table, "sharpening": sharpening_table,
                                                 "tradeoff": tradeoff_table, "per_task": per_task_table}


# ---------------------------------------------------------------------------------------------
# blocks in a Markdown file


def parse_args(text: str) -> tuple[str, str, dict]:
    """(kind, summary path, options) of an opening marker's arguments."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise ReadmeError(f"cannot read the block arguments '{text}': {e}") from None
    if len(words) < 2:
        raise ReadmeError(f"a block needs KIND and SUMMARY_JSON: '<!-- mitigate:table {text} -->'")
    kind, path, rest = words[0], words[1], words[2:]
    if kind not in KINDS:
        raise ReadmeError(f"unknown table kind '{kind}' (known: {', '.join(KINDS)})")
    options = {}
    for w in rest:
        key, eq, value = w.partition("=")
        if not eq or key not in ("ref", "methods", "task"):
            raise ReadmeError(f"unknown option '{w}' (known: ref=NAME, methods=a,b,c, task=SEED)")
        options[key] = value
    return kind, path, options


def generate(kind: str, summary_path: str, options: dict, root: Path = ROOT,
             cache: dict | None = None) -> str:
    """The Markdown table of one block."""
    path = Path(summary_path)
    path = path if path.is_absolute() else Path(root) / path
    cache = {} if cache is None else cache
    if path not in cache:
        if not path.is_file():
            raise ReadmeError(f"summary '{summary_path}' not found (paths are relative to {root})")
        try:
            cache[path] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReadmeError(f"summary '{summary_path}' is not JSON: {e}") from None
    summary = cache[path]
    if kind in ("main", "paired") and not summary.get("methods"):
        raise ReadmeError(f"summary '{summary_path}' has no methods")
    return KINDS[kind](summary, options)


FENCE = re.compile(r"^[ \t]*(```|~~~)", re.M)


def _fenced(text: str) -> list[tuple[int, int]]:
    """(start, end) of the fenced code blocks of a Markdown text (an unclosed one runs to the end)."""
    marks = [m.start() for m in FENCE.finditer(text)]
    marks += [len(text)] if len(marks) % 2 else []
    return list(zip(marks[::2], marks[1::2]))


def render(text: str, root: Path = ROOT, source: str = "<text>") -> str:
    """`text` with every block's body replaced by its generated table (a blank line either side)."""
    out, pos, cache = [], 0, {}
    fenced = _fenced(text)
    for m in OPEN.finditer(text):
        if m.start() < pos or any(a <= m.start() < b for a, b in fenced):
            continue  # inside a block already replaced, or shown in a code block (documentation)
        end = text.find(CLOSE, m.end())
        nxt = OPEN.search(text, m.end())
        line = text.count("\n", 0, m.start()) + 1
        if end < 0 or (nxt is not None and nxt.start() < end):
            raise ReadmeError(f"{source}:{line}: block '{m.group(0)}' has no closing '{CLOSE}'")
        try:
            body = generate(*parse_args(m.group("args")), root=root, cache=cache)
        except ReadmeError as e:
            raise ReadmeError(f"{source}:{line}: {e}") from None
        out += [text[pos:m.end()], "\n\n", body, "\n\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def blocks(text: str) -> list[str]:
    """The opening markers of a text's blocks (outside code blocks)."""
    fenced = _fenced(text)
    return [m.group(0) for m in OPEN.finditer(text) if not any(a <= m.start() < b for a, b in fenced)]


def diff(old: str, new: str, name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{name} (as written)",
                                        f"{name} (from its summaries)"))
