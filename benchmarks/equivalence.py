"""Statistical equivalence of two comparisons of one preset (issue 28): a change may move numbers when
the conclusions stay the same within seed noise.

Given two `reproduce` folders (an old and a new revision, same preset), for every method both
compared and every headline metric, the difference new minus old with a crossed-bootstrap interval
over prompts and seeds (`metrics.summary.summarize` on the two runs' per-prompt rows read back from
their eval.json files: the old run is the reference of a paired block, so a prompt resample is
shared by both). A metric is equivalent when its interval contains 0 or lies within the margin
(0.01 on pass@k, 0.1 on concept counts). Every paired claim of the summaries (each method minus
each reference, per metric) must also keep its side: the same sign where an interval excludes 0
in either run, and an interval that excludes 0 in one must not include it in the other with the
opposite sign. The verdict is `equivalent` when both hold.

    .venv/bin/python benchmarks/equivalence.py runs/old runs/new [--out benchmarks/results/equivalence.json]

Exit status 0 when equivalent, 1 when not (a list of what moved is printed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mitigate.core.io import read_json
from mitigate.metrics.summary import summarize
from mitigate.recipes.evaluate import rows_from_record
from mitigate.recipes.reproduce import eval_folder

MARGINS = {"pass_at_k": 0.01, "concepts": 0.1, "concepts_at_r": 0.1}
OLD, NEW = "old", "new"


def headline(entry: dict) -> dict[str, tuple]:
    """{label: path} of the headline metrics in one summary entry (ID and each OOD split: pass@1,
    pass@kmax; ID concepts and concepts among r)."""
    out = {}
    blocks = [("ID", ("id",), entry["id"])] + [(s, ("ood", s), b) for s, b in entry.get("ood", {}).items()]
    for label, path, block in blocks:
        ks = sorted(block["pass_at_k"], key=int)
        for k in dict.fromkeys(["1", ks[-1]]):
            out[f"{label} pass@{k}"] = (*path, "pass_at_k", k)
        if label == "ID":
            for key in ("concepts", "concepts_at_r"):
                if isinstance(block.get(key), (int, float)):
                    out[f"ID {key}"] = (*path, key)
    return out


def margin_of(path: tuple) -> float:
    return MARGINS["pass_at_k"] if "pass_at_k" in path else MARGINS.get(path[-1], 0.0)


def _at(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def method_rows(folder: Path, method: str, seeds: list[int]) -> dict:
    return {s: rows_from_record(read_json(eval_folder(folder, method, s) / "eval.json", "evaluation")) for s in seeds}


def compare_metrics(old: Path, new: Path, old_summary: dict, new_summary: dict, n_boot: int = 2000) -> list[dict]:
    """One row per (method, headline metric): new - old, its interval, the margin and whether it is
    equivalent."""
    out = []
    for method in [m for m in old_summary["methods"] if m in new_summary["methods"] and "@" not in m]:
        seeds = old_summary["methods"][method]["seeds"]
        if new_summary["methods"][method]["seeds"] != seeds:
            raise SystemExit(f"equivalence: {method} was run with seeds {seeds} and "
                             f"{new_summary['methods'][method]['seeds']}; compare runs of the same seeds")
        rows = {OLD: method_rows(old, method, seeds), NEW: method_rows(new, method, seeds)}
        entry = summarize(rows, [OLD], n_boot, 0)[0][NEW]["paired"][OLD]
        for label, path in headline(old_summary["methods"][method]).items():
            d = _at(entry, path)
            lo, hi = d["ci95"]
            m = margin_of(path)
            out.append({"method": method, "metric": label, "difference": d["mean"], "ci95": [lo, hi], "margin": m,
                        "equivalent": bool(lo <= 0 <= hi or (-m <= lo and hi <= m))})
    return out


def claim_sides(summary: dict) -> dict[tuple, int]:
    """{(method, reference, metric): side} of every paired claim: +1 / -1 when the interval lies
    above / below 0, 0 when it includes 0."""
    out = {}
    for method, entry in summary["methods"].items():
        for ref, block in entry.get("paired", {}).items():
            for label, path in headline(entry).items():
                try:
                    lo, hi = _at(block, path)["ci95"]
                except (KeyError, TypeError):
                    continue
                out[method, ref, label] = 1 if lo > 0 else -1 if hi < 0 else 0
    return out


def compare_claims(old_summary: dict, new_summary: dict) -> list[dict]:
    """The paired claims whose side changed: a sign flip, or a claim made (interval off 0) in one run
    and not the other."""
    a, b = claim_sides(old_summary), claim_sides(new_summary)
    return [{"method": k[0], "reference": k[1], "metric": k[2], "old": a[k], "new": b[k]}
            for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    for folder in (args.old, args.new):
        if not (folder / "summary.json").is_file():
            print(f"equivalence: '{folder}' holds no summary.json (give two reproduce folders)", file=sys.stderr)
            return 2
    old_s, new_s = (read_json(f / "summary.json", "summary") for f in (args.old, args.new))
    metrics = compare_metrics(args.old, args.new, old_s, new_s, args.n_boot)
    claims = compare_claims(old_s, new_s)
    moved = [m for m in metrics if not m["equivalent"]]
    res = {"old": str(args.old), "new": str(args.new), "margins": MARGINS, "metrics": metrics,
           "claims_changed": claims, "equivalent": not moved and not claims}
    for m in moved:
        print(f"moved: {m['method']} {m['metric']}: {m['difference']:+.4f} [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}] "
              f"(margin {m['margin']})")
    for c in claims:
        print(f"claim changed: {c['method']} - {c['reference']} {c['metric']}: side {c['old']:+d} -> {c['new']:+d}")
    print(f"{len(metrics)} metrics, {len(moved)} moved beyond their margin; {len(claims)} paired claims changed side: "
          + ("EQUIVALENT" if res["equivalent"] else "NOT equivalent"))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["equivalent"] else 1


if __name__ == "__main__":
    sys.exit(main())
