"""`mitigate-analysis figures|tables|paper DIR [DIR ...]` (the same as `python -m analysis ...` from the
repository root): figures, tables and paper sources from run folders.

    figures DIR...              PNG + PDF beside the JSON of each run folder:
        audit.json       -> pass_at_k, diversity (diversity among correct samples against ID pass@1)
        summary.json     -> pass_at_k, pareto (more than one method), concept_shares,
                            paired_differences (the paired block: each method minus GRPO and SDSD),
                            context_richness (SDSD-family rows with two or more teacher contexts),
                            training_dynamics and collapse_over_training (the runs' metrics.jsonl),
                            sweep_<parameter> (a sweep); the sharpening rows (base@t<T>) as a
                            grey family on pass_at_k and a grey curve on pareto
        theory.json      -> tilt_vs_base, iterated_dynamics, marginal_bias
        probe_rows.json  -> probe_tilt_vs_shift (rows with a measured shift only)
    tables DIR... --out OUT     LaTeX (booktabs) and Markdown tables of every summary.json
    paper DIR... --out paper    tables/, figures/ and generated/ for paper/main.tex
    readme FILE.md... [--check] rewrite the generated tables of Markdown files from the summaries
                                they name (`<!-- mitigate:table KIND SUMMARY_JSON [opts] -->` ...
                                `<!-- /mitigate:table -->`, see analysis/readme.py); --check writes
                                nothing and exits 1 with a diff when a block is stale

Exit status 2, with nothing written, on a folder with nothing to read, a refused output or a
block that cannot be generated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from analysis import figures as F
from analysis import paper as P
from analysis import readme as R
from analysis import tables as T
from mitigate.core.io import OutputError, check_not_input, write_text


def draw(folder: Path) -> list[Path]:
    """Every figure the JSON in `folder` supports; the paths written."""
    written = []
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        written += F.plot_pass_at_k(summary, folder / "pass_at_k")
        if len(summary["methods"]) > 1:
            pareto = F.plot_pareto(summary, folder / "pareto")
            if pareto is None:
                print(f"analysis: note: no pareto figure for '{folder}': the summary has no OOD split", file=sys.stderr)
            written += pareto or []
        written += F.plot_concept_shares(summary, folder / "concept_shares") or []
        written += F.plot_paired_differences(summary, folder / "paired_differences") or []
        written += F.plot_context_richness(summary, folder / "context_richness") or []
        runs = F.dynamics_of(folder, summary)
        if runs:
            written += F.plot_training_dynamics(runs, folder / "training_dynamics") or []
            written += F.plot_collapse_over_training(runs, folder / "collapse_over_training") or []
        if summary.get("sweep"):
            written += F.plot_sweep(summary, folder / "sweep")
    if (folder / "audit.json").is_file():  # `mitigate audit`: the summary schema, every model against the base
        audit = json.loads((folder / "audit.json").read_text())
        written += F.plot_pass_at_k(audit, folder / "pass_at_k")
        written += F.plot_diversity_vs_accuracy(audit, folder / "diversity") or []
    if (folder / "theory.json").is_file():
        theory = json.loads((folder / "theory.json").read_text())
        curves = theory.get("exact", {}).get("curves")
        if curves is None:
            print(f"analysis: note: '{folder / 'theory.json'}' holds no curves (written by an older mitigate); "
                  "run `mitigate theory` again for the theory figures", file=sys.stderr)
        else:
            written += F.plot_tilt_vs_base(curves, folder / "tilt_vs_base")
            written += F.plot_iterated_dynamics(curves, folder / "iterated_dynamics")
            written += F.plot_marginal_bias(curves, folder / "marginal_bias")
        if (folder / "probe_rows.json").is_file():
            rows = json.loads((folder / "probe_rows.json").read_text())
            rho = theory.get("probe", {}).get("spearman_rho")
            written += F.plot_probe(rows, rho, folder / "probe_tilt_vs_shift") or []
    return written


def write_tables(dirs: list[Path], out: Path, interval: str, command: str) -> list[Path]:
    """OUT/<run>-<table>.tex and .md for every summary.json among `dirs`."""
    check_not_input(out, dirs)
    written = []
    folders = [d for d in dirs if (d / "summary.json").is_file()]
    order = []
    summaries = {}
    for d in folders:
        summaries[d] = json.loads((d / "summary.json").read_text())
        order += [m for m in summaries[d]["methods"] if m not in order]
    for d, slug in zip(folders, T.folder_slugs(folders)):
        written += [p for _, tex in T.write_tables(summaries[d], d, out, f"{slug}-", interval, command, order)
                    for p in (tex, tex.with_suffix(".md"))]
    return written


def readme(files: list[Path], check: bool, root: Path) -> int:
    """0: every file up to date (or rewritten); 1: --check found a stale block; 2: an error, with
    nothing written (every file is generated before any is written)."""
    missing = [p for p in files if not p.is_file()]
    for path in missing:
        print(f"analysis readme: error: '{path}' is not a file", file=sys.stderr)
    if missing:
        return 2
    try:
        texts = [(path, path.read_text(), R.render(path.read_text(), root, str(path))) for path in files]
    except R.ReadmeError as e:
        print(f"analysis readme: error: {e}", file=sys.stderr)
        return 2
    stale = False
    for path, old, new in texts:
        if new == old:
            print(f"{path}: up to date ({len(R.blocks(old))} generated blocks)")
        elif check:
            stale = True
            print(f"{path}: stale; `python -m analysis readme {path}` rewrites it\n{R.diff(old, new, str(path))}")
        else:
            write_text(path, new)
            print(f"wrote {path}")
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="mitigate-analysis", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("figures", help="draw the figures of run folders (summary.json and/or theory.json)")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    for name, what in (("tables", "LaTeX and Markdown tables of run folders into OUT"),
                       ("paper", "tables, figures and methods text for paper/main.tex into OUT")):
        p = sub.add_parser(name, help=what)
        p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--interval", choices=T.INTERVALS, default="ci",
                       help="ci: mean [lo, hi] (default); pm: mean +- half the 95%% interval's width")
    p = sub.add_parser("readme", help="rewrite the generated tables of Markdown files from their summaries")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 with a diff if a block is stale")
    p.add_argument("--root", type=Path, default=R.ROOT,
                   help="folder the summary paths are relative to (default: the repository)")
    a = ap.parse_args(argv)
    if a.command == "readme":
        return readme(a.files, a.check, a.root)
    readable = ("summary.json", "theory.json") + (("audit.json",) if a.command == "figures" else ())
    bad = [d for d in a.dirs if not any((d / f).is_file() for f in readable)]
    for d in bad:
        why = "does not exist" if not d.exists() else f"holds none of {', '.join(readable)}"
        print(f"analysis: '{d}' {why}; give a run folder of `mitigate reproduce`, `mitigate sweep`, `mitigate audit`, "
              "`mitigate table` or `mitigate theory`", file=sys.stderr)
    if bad:
        return 2
    command = "python -m analysis " + shlex.join(argv)
    try:
        if a.command == "figures":
            written = [p for d in a.dirs for p in draw(d)]
        elif a.command == "tables":
            written = write_tables(a.dirs, a.out, a.interval, command)
        else:
            written = P.build(a.dirs, a.out, a.interval, command)
    except (P.PaperError, OutputError) as e:
        print(f"analysis {a.command}: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
