"""`python -m analysis figures DIR [DIR ...]`: PNG + PDF figures beside the JSON of each run folder.

    summary.json     -> pass_at_k, and pareto when it holds more than one method
    theory.json      -> tilt_vs_base, iterated_dynamics, marginal_bias
    probe_rows.json  -> probe_tilt_vs_shift (rows with a measured shift only)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis import figures as F


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("figures", help="draw the figures of run folders (summary.json and/or theory.json)")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    a = ap.parse_args(argv)
    bad = [d for d in a.dirs if not any((d / f).is_file() for f in ("summary.json", "theory.json"))]
    for d in bad:
        why = "does not exist" if not d.exists() else "holds neither summary.json nor theory.json"
        print(f"analysis: '{d}' {why}; give a run folder of `mitigate reproduce`, `mitigate table` "
              "or `mitigate theory`", file=sys.stderr)
    if bad:
        return 2
    for d in a.dirs:
        for path in draw(d):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
