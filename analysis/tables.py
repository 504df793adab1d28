"""Paper tables from run folders: LaTeX (booktabs) and the same tables as Markdown.

Each table is built once as a list of cells (text, interval, bold) and rendered twice. The tables
of one summary.json (a `mitigate reproduce`, `mitigate table` or `mitigate sweep` folder):

    main-accuracy, main-diversity   mean and 95% interval per method (or mean +- half the width)
    paired-<ref>-accuracy/-diversity  method minus grpo / sdsd, paired interval, * = excludes zero
    ranking                         mean rank with its interval, each criterion's value and rank
    tradeoff                        gap above the GRPO/SDSD trade-off curves (when the summary has them)
    budget                          what each method spent per training run
    sweep                           each setting's varying parameters and key metrics (`mitigate sweep`)

Bold marks the best value of a column, in the metric's declared direction (`DIRECTIONS`), only
when the intervals separate it from every other row: where paired differences exist (the
summary's `paired` block), the best row's paired interval against that row must exclude zero;
otherwise its 95% interval must not overlap the other row's. A tie at the printed precision is
never bold, nor is a column without a direction (token entropy: reported to show it is *not* a
diversity measure; budgets: costs to state, equal by design for the rollouts).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mitigate import __version__
from mitigate.core.io import git_revision, write_text
from mitigate.metrics.ranking import criteria

INTERVALS = ("ci", "pm")  # mean [lo, hi], or mean +- (hi - lo) / 2

# Declared direction of every metric: +1 higher is better, -1 lower is better, 0 not judged.
DIRECTIONS = {
    "pass_at_k": +1,
    "distinct_correct": +1,  # distinct correct outputs among n samples (functional diversity)
    "concepts": +1,  # distinct concepts among correct samples (semantic diversity)
    "concept_entropy": +1,
    "top_concept_share": -1,  # share of the dominant concept: lower = less collapse
    "token_entropy": 0,  # reported to show it does not track diversity; never bold
    "semantic_cosine_distance": +1, "semantic_vendi": +1, "semantic_clusters": +1,
    "lexical_cosine_distance": +1, "lexical_vendi": +1, "lexical_clusters": +1,
}
DECIMALS = {"concepts": 2, "distinct_correct": 2, "semantic_vendi": 2, "lexical_vendi": 2, "semantic_clusters": 2,
            "lexical_clusters": 2}  # everything else: 3, the precision the ranking compares at
LABELS = {"distinct_correct": "distinct correct", "concepts": "concepts", "concept_entropy": "concept entropy",
          "top_concept_share": "top-concept share", "token_entropy": "token entropy"}
DIVERSITY = ("concepts", "concept_entropy", "top_concept_share", "distinct_correct", "token_entropy")
TEXT_DIVERSITY = tuple(f"{kind}_{key}" for kind in ("semantic", "lexical")
                       for key in ("cosine_distance", "vendi", "clusters"))
BUDGET_FIELDS = (("rollouts", "rollouts"), ("verifier_calls", "verifier calls"),
                 ("reference_generations", "reference generations"), ("forward_tokens", "forward tokens"),
                 ("backward_tokens", "backward tokens"), ("wall_seconds", "wall s"))


def direction(path: Sequence[str]) -> int:
    """The declared direction of the metric at `path` inside a split block."""
    key = path[-2] if len(path) >= 2 and path[-2] == "pass_at_k" else path[-1]
    return DIRECTIONS.get(key, 0)


def decimals(path: Sequence[str]) -> int:
    return DECIMALS.get(path[-1], 3)


# ---------------------------------------------------------------------------------------------
# table model


@dataclass
class Cell:
    """One table cell: plain `text`, or a number with its interval / paired marker."""

    text: str = ""
    mean: float | None = None
    ci: Sequence[float] | None = None
    decimals: int = 3
    signed: bool = False  # paired differences print their sign
    star: bool = False  # the paired interval excludes zero
    bold: bool = False
    ints: bool = False  # counts: thousands separators, no decimals
    suffix: str = ""  # plain text after the number (e.g. a rank)


@dataclass
class Column:
    header: str
    group: str = ""  # spanning header above consecutive columns of the same group
    direction: int = 0
    align: str = "r"


@dataclass
class Table:
    name: str  # file stem, e.g. "main-accuracy"
    caption: str
    columns: list[Column]
    rows: list[list[Cell]]
    wide: bool = True  # table* (both columns of a two-column paper)
    notes: list[str] = field(default_factory=list)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _number(x: float, d: int, signed: bool = False) -> str:
    x = 0.0 if round(x, d) == 0 else x  # never "-0.000"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def cell_text(c: Cell, interval: str, latex: bool) -> str:
    """The rendered cell. LaTeX: minus signs as $-$, intervals in small type, bold via \\textbf."""
    if c.mean is None:
        return latex_escape(c.text) if latex else md_escape(c.text)
    if not _finite(c.mean):
        return "--" if latex else "n/a"
    if c.ints:
        s = f"{int(round(c.mean)):,}"
        body = s.replace(",", "{,}") if latex else s
    else:
        body = _number(c.mean, c.decimals, c.signed)
        if c.ci is not None and _finite(c.ci[0]) and _finite(c.ci[1]):
            if interval == "pm":
                half = _number((c.ci[1] - c.ci[0]) / 2, c.decimals)
                body += f" $\\pm$ {half}" if latex else f" ± {half}"
            else:
                lo, hi = (_number(v, c.decimals, c.signed) for v in c.ci)
                body += f" {{\\scriptsize[{lo}, {hi}]}}" if latex else f" [{lo}, {hi}]"
        if c.star:
            body += "$^{*}$" if latex else "*"
    if c.suffix:
        body += latex_escape(c.suffix) if latex else md_escape(c.suffix)
    if latex:
        body = re.sub(r"(?<![\w$])-(?=\d)", "$-$", body)
        body = re.sub(r"(?<![\w$])\+(?=\d)", "$+$", body)
        return f"\\textbf{{{body}}}" if c.bold else body
    return f"**{body}**" if c.bold else body


# ---------------------------------------------------------------------------------------------
# escaping


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX text (method names like sdsd_cmi, paths, anything a user named)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


# ---------------------------------------------------------------------------------------------
# bold: the best of a column, only where the intervals separate it from every other row

Paired = Callable[[int, int], "tuple[float, Sequence[float]] | None"]


def best_row(values: Sequence[float], cis: Sequence[Sequence[float] | None], direction: int, decimals: int,
             paired: Paired | None = None) -> int | None:
    """Index of the row to set in bold, or None.

    The best row in `direction` at the printed precision (a tie there: None); it is bold only if,
    against every other row j with a value, `paired(best, j)` (or `paired(j, best)`, the reverse
    difference) excludes zero in the better direction, or, without paired data, the two 95%
    intervals do not overlap."""
    if direction == 0:
        return None
    ok = [i for i, v in enumerate(values) if _finite(v)]
    if len(ok) < 2:
        return None
    key = {i: direction * round(values[i], decimals) for i in ok}
    best = max(ok, key=key.get)
    if sum(key[i] == key[best] for i in ok) > 1:
        return None
    for j in ok:
        if j == best:
            continue
        d = paired(best, j) if paired else None
        sign = 1
        if d is None and paired:
            d, sign = paired(j, best), -1
        if d is not None:
            lo, hi = (sign * x for x in d[1])
            lo, hi = min(lo, hi), max(lo, hi)
            if not (_finite(lo) and _finite(hi)) or not (lo > 0 if direction > 0 else hi < 0):
                return None
            continue
        a, b = cis[best], cis[j]
        if a is None or b is None or not all(map(_finite, (*a, *b))):
            return None
        if not (a[0] > b[1] if direction > 0 else a[1] < b[0]):
            return None
    return best


def mark_best(table_rows: list[list[Cell]], col: int, direction: int, paired: Paired | None = None) -> None:
    cells = [r[col] for r in table_rows]
    i = best_row([c.mean if c.mean is not None else float("nan") for c in cells], [c.ci for c in cells],
                 direction, cells[0].decimals if cells else 3, paired)
    if i is not None:
        cells[i].bold = True


# ---------------------------------------------------------------------------------------------
# summary.json -> tables


def _get(tree: dict, path: Sequence[str]):
    for p in path:
        tree = tree[p]
    return tree


def _has(tree: dict, path: Sequence[str]) -> bool:
    try:
        _get(tree, path)
        return True
    except (KeyError, TypeError):
        return False


def ood_splits(summary: dict) -> list[str]:
    return list(dict.fromkeys(s for m in summary["methods"].values() for s in m.get("ood", {})))


def _ks(pk: dict) -> list[str]:
    """pass@1, pass@8 (when measured) and the largest k measured."""
    top = max(pk, key=int)
    return list(dict.fromkeys(k for k in ("1", "8", top) if k in pk))


def accuracy_columns(summary: dict) -> list[tuple[str, str, tuple]]:
    """(group, header, path into a method entry) of the accuracy table: pass@k on ID and each OOD split."""
    first = next(iter(summary["methods"].values()))
    cols = [("ID", f"pass@{k}", ("id", "pass_at_k", k)) for k in _ks(first["id"]["pass_at_k"])]
    for s in ood_splits(summary):
        pk = first["ood"][s]["pass_at_k"]
        top = max(pk, key=int)
        cols += [(s, f"pass@{k}", ("ood", s, "pass_at_k", k)) for k in dict.fromkeys(("1", top))]
    return [c for c in cols if all(_has(m, c[2]) for m in summary["methods"].values())]


def diversity_columns(summary: dict) -> list[tuple[str, str, tuple]]:
    """(group, header, path) of the diversity table: ID diversity among correct samples."""
    first = next(iter(summary["methods"].values()))["id"]
    keys = [k for k in DIVERSITY + TEXT_DIVERSITY if k in first]
    return [("ID", LABELS.get(k, k.replace("_", " ")), ("id", k)) for k in keys]


def _arrow(d: int) -> str:
    return {1: " ↑", -1: " ↓"}.get(d, "")


def _paired_lookup(summary: dict, names: list[str], path: tuple) -> Paired:
    def lookup(i: int, j: int):
        d = summary["methods"][names[i]].get("paired", {}).get(names[j])
        if d is None or not _has(d, path):
            return None
        cell = _get(d, path)
        return cell["mean"], cell["ci95"]

    return lookup


def value_table(summary: dict, name: str, caption: str, cols: list[tuple[str, str, tuple]],
                order: Sequence[str] | None = None) -> Table:
    """Mean and interval per method and column; the best per column in bold (see `best_row`)."""
    names = [m for m in (order or summary["methods"]) if m in summary["methods"]]
    columns = [Column("method", align="l"), Column("seeds")]
    columns += [Column(h + _arrow(direction(p)), g, direction(p)) for g, h, p in cols]
    rows = []
    for n in names:
        m = summary["methods"][n]
        row = [Cell(n), Cell(str(len(m.get("seeds", []))))]
        for _, _, p in cols:
            ci = _get(m["ci95"], p) if _has(m.get("ci95", {}), p) else None
            row.append(Cell(mean=_get(m, p), ci=ci, decimals=decimals(p)))
        rows.append(row)
    for j, (_, _, p) in enumerate(cols, 2):
        mark_best(rows, j, direction(p), _paired_lookup(summary, names, p))
    return Table(name, caption, columns, rows, wide=len(cols) > 4)


def paired_table(summary: dict, against: str, name: str, caption: str, cols: list[tuple[str, str, tuple]],
                 order: Sequence[str] | None = None) -> Table | None:
    """Every method minus `against`: paired mean and interval; * = the interval excludes zero."""
    names = [m for m in (order or summary["methods"]) if against in summary["methods"].get(m, {}).get("paired", {})]
    if not names:
        return None
    columns = [Column("method", align="l")] + [Column(h + _arrow(direction(p)), g, direction(p)) for g, h, p in cols]
    rows = []
    for n in names:
        d = summary["methods"][n]["paired"][against]
        row = [Cell(n)]
        for _, _, p in cols:
            c = _get(d, p)
            lo, hi = c["ci95"]
            row.append(Cell(mean=c["mean"], ci=c["ci95"], decimals=decimals(p), signed=True,
                            star=_finite(lo) and _finite(hi) and (lo > 0 or hi < 0)))
        rows.append(row)
    return Table(name, caption, columns, rows, wide=len(cols) > 4)


def ranking_table(summary: dict, name: str = "ranking") -> Table | None:
    """Order by mean rank (interval over bootstrap replicates); each criterion's value and rank.
    Bold: the best mean rank and each criterion's best value, by the interval rule."""
    ranking = summary.get("ranking")
    if not ranking:
        return None
    skip = set(summary.get("not_ranked_saturated", []))
    cols = [c for c in criteria(summary) if c[0] not in skip]
    names = list(ranking)
    columns = [Column("", align="r"), Column("method", align="l"), Column("mean rank ↓", direction=-1),
               Column("pass@1 rank"), Column("diversity rank")]
    columns += [Column(f"pass@{k} ↑", "ID" if split == "id" else split, +1) for _, split, k in cols]
    rows = []
    for i, n in enumerate(names, 1):
        r = ranking[n]
        row = [Cell(str(i)), Cell(n), Cell(mean=r["mean rank"], ci=r.get("mean rank ci95"), decimals=2),
               Cell(f"{r['pass@1 rank']:g}"), Cell(f"{r['diversity rank']:g}")]
        for label, split, k in cols:
            path = ("id", "pass_at_k", k) if split == "id" else ("ood", split, "pass_at_k", k)
            m = summary["methods"][n]
            row.append(Cell(mean=_get(m, path), ci=_get(m["ci95"], path), decimals=3, suffix=f" ({r[label]:g})"))
        rows.append(row)
    mark_best(rows, 2, -1)
    for j, (_, split, k) in enumerate(cols, 5):
        path = ("id", "pass_at_k", k) if split == "id" else ("ood", split, "pass_at_k", k)
        mark_best(rows, j, +1, _paired_lookup(summary, names, path))
    notes = ["Each criterion's rank is in the ranking block of summary.json; equal printed values share a rank."]
    if skip:
        notes.append("Not ranked (every method's interval above 0.99): " + ", ".join(sorted(skip)) + ".")
    caption = ("Ranking by mean rank over the criteria (rank 1 = best; interval over crossed-bootstrap replicates); "
               "pass@1 and diversity (ID concepts) ranks on their own.")
    return Table(name, caption, columns, rows, wide=True, notes=notes)


def budget_table(summary: dict, order: Sequence[str] | None = None, name: str = "budget") -> Table | None:
    names = [m for m in (order or summary["methods"]) if summary["methods"].get(m, {}).get("budget")]
    if not names:
        return None
    columns = [Column("method", align="l")] + [Column(label) for _, label in BUDGET_FIELDS]
    rows = []
    for n in names:
        b = summary["methods"][n]["budget"]
        rows.append([Cell(n)] + [Cell(mean=float(b.get(f, 0)), decimals=1, ints=f != "wall_seconds")
                                 for f, _ in BUDGET_FIELDS])
    caption = ("Budget per training run (mean over seeds), counted where the work happens: every sample, scoring "
               "forward and verifier call of the run; evaluation not included. Costs, not scores: never bold.")
    return Table(name, caption, columns, rows, wide=True)


def tradeoff_table(summary: dict, name: str = "tradeoff") -> Table | None:
    gaps = summary.get("tradeoff", {}).get("gaps_above")
    if not gaps:
        return None
    columns = [Column("method", align="l"), Column("curve", align="l"), Column("metric", align="l"),
               Column("gap above curve"), Column("outside share")]
    rows = []
    for n, by_curve in gaps.items():
        for curve, by_metric in by_curve.items():
            for metric, g in by_metric.items():
                lo, hi = g["ci95"]
                star = _finite(lo) and _finite(hi) and (lo > 0 or hi < 0) and g["outside_share"] < 0.05
                rows.append([Cell(n), Cell(curve), Cell(metric.replace("pass_at_k/", "pass@")),
                             Cell(mean=g["median"] if g["median"] is not None else float("nan"), ci=g["ci95"],
                                  signed=True, star=star), Cell(mean=g["outside_share"], decimals=2)])
    caption = ("Gap of each method above the GRPO and SDSD trade-off curves (weights interpolated with the base), "
               "at the method's ID pass@1: median and 95\\% interval over crossed-bootstrap replicates; * = the "
               "interval excludes zero and fewer than 5\\% of replicates fall outside the curve's range.")
    return Table(name, caption, columns, rows, wide=False)


def sweep_table(summary: dict, name: str = "sweep") -> Table | None:
    """Each setting of a `mitigate sweep`: the parameters that vary across settings, then ID
    pass@1, ID pass@max, ID concepts, top-concept share and each OOD split's pass@max."""
    sweep = summary.get("sweep")
    if not sweep:
        return None
    varying = sweep.get("varying", {})
    params = list(dict.fromkeys(k for v in varying.values() for k in v))
    first = next(iter(summary["methods"].values()))
    top = max(first["id"]["pass_at_k"], key=int)
    cols = [("ID", "pass@1", ("id", "pass_at_k", "1"))]
    cols += [("ID", f"pass@{top}", ("id", "pass_at_k", top))] if top != "1" else []
    cols += [("ID", LABELS[k], ("id", k)) for k in ("concepts", "top_concept_share") if k in first["id"]]
    for s in ood_splits(summary):
        t = max(first["ood"][s]["pass_at_k"], key=int)
        cols.append((s, f"pass@{t}", ("ood", s, "pass_at_k", t)))
    names = list(summary["methods"])
    columns = [Column("setting", align="l")] + [Column(short_param(p), "parameters", align="l") for p in params]
    columns += [Column(h + _arrow(direction(p)), g, direction(p)) for g, h, p in cols]
    rows = []
    for n in names:
        m = summary["methods"][n]
        row = [Cell(n)] + [Cell(_param_text(varying.get(n, {}).get(p, "--" if n == "base" else "")))
                           for p in params]
        row += [Cell(mean=_get(m, p), ci=_get(m["ci95"], p), decimals=decimals(p)) for _, _, p in cols]
        rows.append(row)
    for j, (_, _, p) in enumerate(cols, 1 + len(params)):
        mark_best(rows, j, direction(p), _paired_lookup(summary, names, p))
    seeds = sweep.get("seeds", [])
    split = latex_escape(summary.get("id_split", "id_test"))
    caption = (f"Sweep of {latex_escape(sweep.get('config', ''))}: {len(varying)} settings x {len(seeds)} seeds "
               f"({', '.join(map(str, seeds))}); ID columns on the {split} pairs.")
    return Table(name, caption, columns, rows, wide=True)


def short_param(key: str) -> str:
    """train.regularizers.0.coef -> regularizers.0.coef (the train. prefix says nothing here)."""
    return key.removeprefix("train.")


def _param_text(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return "" if v is None else str(v)


def tables_for(summary: dict, interval: str = "ci", order: Sequence[str] | None = None) -> list[Table]:
    """Every table one summary supports, in paper order."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    how = "mean and 95\\% interval" if interval == "ci" else "mean $\\pm$ half the width of the 95\\% interval"
    split = summary.get("id_split", "id_test")
    common = (f"Means over seeds of means over prompts ({how}; crossed bootstrap over prompts and seeds); ID on the "
              f"{latex_escape(split)} pairs. Bold: best in the column's direction (arrows), only where the "
              "intervals separate it from every other row.")
    out = [value_table(summary, "main-accuracy", "pass@k on the ID split and each OOD split. " + common,
                       accuracy_columns(summary), order)]
    div = diversity_columns(summary)
    if div:
        out.append(value_table(summary, "main-diversity", "Diversity among correct ID samples. " + common, div, order))
    # a column saturated for every method (all intervals above 0.99) has no difference worth a
    # column, and its rounding-level "significant" differences would only mislead
    saturated = set(summary.get("not_ranked_saturated", []))
    paired_acc = [c for c in accuracy_columns(summary) if f"{c[0]} {c[1]}" not in saturated]
    dropped = [f"{c[0]} {c[1]}" for c in accuracy_columns(summary) if c not in paired_acc]
    note = f" Omitted as saturated for every method: {latex_escape(', '.join(dropped))}." if dropped else ""
    for ref in ("grpo", "sdsd"):
        for part, cols in (("accuracy", paired_acc), ("diversity", div)):
            t = cols and paired_table(summary, ref, f"paired-{ref}-{part}",
                                      f"Paired differences, method minus {ref} ({part}): same prompts, crossed "
                                      "bootstrap; $^{*}$ = the 95\\% interval excludes zero."
                                      + (note if part == "accuracy" else ""), cols, order)
            if t:
                out.append(t)
    for t in (ranking_table(summary), tradeoff_table(summary), budget_table(summary, order), sweep_table(summary)):
        if t is not None:
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# rendering


def _groups(columns: list[Column]) -> list[tuple[str, int, int]]:
    """(group, first column index, last) of consecutive columns sharing a non-empty group."""
    out = []
    for i, c in enumerate(columns):
        if out and out[-1][0] == c.group and out[-1][2] == i - 1:
            out[-1] = (c.group, out[-1][1], i)
        else:
            out.append((c.group, i, i))
    return [g for g in out if g[0]]


def _latex_header(h: str) -> str:
    return latex_escape(h.replace(" ↑", "").replace(" ↓", "")) + (
        " $\\uparrow$" if h.endswith("↑") else " $\\downarrow$" if h.endswith("↓") else "")


def to_latex(t: Table, interval: str, provenance: Sequence[str] = (), label_prefix: str = "") -> str:
    env = "table*" if t.wide else "table"
    lines = [f"% {p}" for p in provenance]
    lines += [f"\\begin{{{env}}}[tbp]", "\\centering", "\\footnotesize",
              f"\\caption{{{t.caption}}}", f"\\label{{tab:{label_prefix}{t.name}}}",
              "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
              f"\\begin{{tabular}}{{{''.join(c.align for c in t.columns)}}}", "\\toprule"]
    groups = _groups(t.columns)
    if groups:
        cells, rules, col = [], [], 0
        for g, a, b in groups:
            cells += [""] * (a - col) + [f"\\multicolumn{{{b - a + 1}}}{{c}}{{{latex_escape(g)}}}"]
            rules.append(f"\\cmidrule(lr){{{a + 1}-{b + 1}}}")
            col = b + 1
        cells += [""] * (len(t.columns) - col)
        lines += [" & ".join(cells) + " \\\\", "".join(rules)]
    lines.append(" & ".join(_latex_header(c.header) for c in t.columns) + " \\\\")
    lines.append("\\midrule")
    for r in t.rows:
        lines.append(" & ".join(cell_text(c, interval, latex=True) for c in r) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}"]
    for n in t.notes:
        lines.append(f"\\par\\smallskip{{\\scriptsize {latex_escape(n)}}}")
    lines += [f"\\end{{{env}}}", ""]
    return "\n".join(lines)


def to_markdown(t: Table, interval: str, provenance: Sequence[str] = ()) -> str:
    lines = [f"<!-- {p} -->" for p in provenance]
    caption = re.sub(r"\$\^\{\*\}\$", "*", t.caption).replace("\\%", "%").replace("$\\pm$", "±").replace("\\_", "_")
    lines += [f"**{t.name}.** {caption}", ""]
    heads = [(f"{c.group} " if c.group and c.group != "parameters" else "") + c.header for c in t.columns]
    lines.append("| " + " | ".join(md_escape(h) for h in heads) + " |")
    lines.append("|" + "|".join("--:" if c.align == "r" else "---" for c in t.columns) + "|")
    for r in t.rows:
        lines.append("| " + " | ".join(cell_text(c, interval, latex=False) for c in r) + " |")
    lines += [""] + [n for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# files


def slug(name: str) -> str:
    """A file-name and LaTeX-label safe name: lower case letters, digits and hyphens."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "run"


def folder_slugs(folders: Sequence[Path]) -> list[str]:
    """One distinct slug per folder, from its name (a repeated name gets -2, -3, ...)."""
    out: list[str] = []
    for f in folders:
        s = slug(Path(f).resolve().name)
        base, i = s, 2
        while s in out:
            s, i = f"{base}-{i}", i + 1
        out.append(s)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def provenance_lines(command: str, folder: Path) -> list[str]:
    """What a table's header comment says: the command that made it and the data it read."""
    return [f"Generated by: {command}",
            f"From: {folder}/summary.json (sha256 {sha256(Path(folder) / 'summary.json')[:16]})",
            f"mitigate {__version__}, git {git_revision() or 'unknown'}. Do not edit: regenerate with the command."]


def write_tables(summary: dict, folder: Path, out: Path, prefix: str, interval: str, command: str,
                 order: Sequence[str] | None = None) -> list[tuple[Table, Path]]:
    """OUT/PREFIX-NAME.tex and .md for every table of one summary; (table, tex path) pairs."""
    prov = provenance_lines(command, folder)
    written = []
    for t in tables_for(summary, interval, order):
        tex = Path(out) / f"{prefix}{t.name}.tex"
        write_text(tex, to_latex(t, interval, prov, label_prefix=prefix))
        write_text(tex.with_suffix(".md"), to_markdown(t, interval, prov))
        written.append((t, tex))
    return written
