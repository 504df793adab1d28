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

Multiplicity. A default comparison has ~90 headline metrics and ~170 paired claims, so at 95%
about 4 metric intervals exclude 0 by chance alone and claims near 0 flip sides with seed noise.
The check therefore also gives a family-wise verdict (`familywise`): every metric interval at the
Bonferroni level 1 - 0.05/n_metrics; no claim reverses (excludes 0 on opposite sides at 95%); and a
claim that excludes 0 at the Bonferroni level over a run's claims keeps its side at 95% in the
other run. A calibration of two runs of one revision that differ only in their seeds
(`--seeds-by-position`: seed i of one run against seed i of the other; the streams of old and new
revisions are unrelated anyway) measures what seed noise alone does to each verdict
(benchmarks/README.md).

Exit status 0 when equivalent (the family-wise verdict), 1 when not (a list of what moved is
printed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mitigate.core.io import read_json
from mitigate.metrics.statistics import percentile_interval
from mitigate.metrics.summary import summarize
from mitigate.recipes.evaluate import rows_from_record
from mitigate.recipes.reproduce import eval_folder

MARGINS = {"pass_at_k": 0.01, "concepts": 0.1, "concepts_at_r": 0.1}
OLD, NEW = "old", "new"
ALPHA = 0.05


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


def split_and_key(path: tuple) -> tuple[str, tuple]:
    """A summary path (("id", "pass_at_k", "1") or ("ood", split, ...)) as (split, metric key)."""
    return (path[1], path[2:]) if path[0] == "ood" else (path[0], path[1:])


def familywise_level(n: int) -> float:
    return 1 - ALPHA / max(n, 1)


def seed_pairs(method: str, old_seeds: list[int], new_seeds: list[int], by_position: bool) -> list[tuple[int, int]]:
    if old_seeds == new_seeds or (by_position and len(old_seeds) == len(new_seeds)):
        return list(zip(old_seeds, new_seeds))
    raise ValueError(f"equivalence: {method} was run with seeds {old_seeds} and {new_seeds}; compare runs of the "
                     "same seeds, or pass --seeds-by-position for runs with as many seeds")


def compare_metrics(old: Path, new: Path, old_summary: dict, new_summary: dict, n_boot: int = 2000,
                    by_position: bool = False) -> list[dict]:
    """One row per (method, headline metric): new - old, its 95% interval and its interval at the
    Bonferroni level over all rows, the margin, and whether each interval is equivalent (covers 0
    or lies within the margin)."""
    blocks = []
    for method in [m for m in old_summary["methods"] if m in new_summary["methods"] and "@" not in m]:
        pairs = seed_pairs(method, old_summary["methods"][method]["seeds"],
                           new_summary["methods"][method]["seeds"], by_position)
        old_rows = method_rows(old, method, [a for a, _ in pairs])
        new_rows = method_rows(new, method, [b for _, b in pairs])
        rows = {OLD: old_rows, NEW: {a: new_rows[b] for a, b in pairs}}  # new seed b stands in for old seed a
        entry, aux = summarize(rows, [OLD], n_boot, 0)
        blocks.append((method, entry[NEW]["paired"][OLD], aux))
    n = sum(len(headline(old_summary["methods"][m])) for m, _, _ in blocks)
    level = familywise_level(n)
    out = []
    for method, paired, aux in blocks:
        for label, path in headline(old_summary["methods"][method]).items():
            d = _at(paired, path)
            split, key = split_and_key(path)
            column = aux["keys"][split].index(key)
            reps = aux["replicates"][split]
            fw = percentile_interval(reps[NEW][:, [column]] - reps[OLD][:, [column]], level)[0].tolist()
            m = margin_of(path)
            out.append({"method": method, "metric": label, "difference": d["mean"], "ci95": d["ci95"],
                        "ci_familywise": fw, "margin": m, "equivalent": within(d["ci95"], m),
                        "equivalent_familywise": within(fw, m)})
    return out


def within(ci, margin: float) -> bool:
    lo, hi = ci
    return bool(lo <= 0 <= hi or (-margin <= lo and hi <= margin))


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
    """The paired claims whose side changed at 95%: a sign flip, or a claim made (interval off 0) in
    one run and not the other."""
    a, b = claim_sides(old_summary), claim_sides(new_summary)
    return [{"method": k[0], "reference": k[1], "metric": k[2], "old": a[k], "new": b[k]}
            for k in sorted(set(a) & set(b)) if a[k] != b[k]]


def familywise_claim_sides(folder: Path, summary: dict, n_boot: int) -> dict[tuple, int]:
    """claim_sides of a run recomputed from its per-prompt rows with every interval at the
    Bonferroni level over the run's claims (the same crossed bootstrap as `reproduce`)."""
    methods = summary["methods"]
    refs = sorted({r for e in methods.values() for r in e.get("paired", {})})
    rows = {m: method_rows(folder, m, e["seeds"]) for m, e in methods.items()}
    level = familywise_level(len(claim_sides(summary)))
    block, _ = summarize(rows, refs, n_boot, 0, level=level)
    return claim_sides({"methods": {m: {**methods[m], "paired": block[m]["paired"]} for m in methods}})


def broken_claims(changed: list[dict], strong_old: dict, strong_new: dict) -> list[dict]:
    """The family-wise claim rule: a claim breaks when it reverses (off 0 on opposite sides at 95%),
    or when it is off 0 at the Bonferroni level in one run and not on the same side at 95% in the
    other."""
    out = []
    for c in changed:
        k = (c["method"], c["reference"], c["metric"])
        reversed_ = c["old"] * c["new"] == -1
        lost = strong_old.get(k, 0) not in (0, c["new"]) or strong_new.get(k, 0) not in (0, c["old"])
        if reversed_ or lost:
            out.append({**c, "reversed": reversed_, "strong_old": strong_old.get(k, 0),
                        "strong_new": strong_new.get(k, 0)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--n-boot", type=int, default=2000,
                    help="bootstrap replicates (the family-wise intervals sit far in the tails: 20000 for a record)")
    ap.add_argument("--seeds-by-position", action="store_true",
                    help="pair seed i of OLD with seed i of NEW (a calibration: one revision, different seeds)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    for folder in (args.old, args.new):
        if not (folder / "summary.json").is_file():
            print(f"equivalence: '{folder}' holds no summary.json (give two reproduce folders)", file=sys.stderr)
            return 2
    old_s, new_s = (read_json(f / "summary.json", "summary") for f in (args.old, args.new))
    try:
        metrics = compare_metrics(args.old, args.new, old_s, new_s, args.n_boot, args.seeds_by_position)
    except ValueError as e:  # runs that cannot be paired: bad input, nothing written
        print(e, file=sys.stderr)
        return 2
    claims = compare_claims(old_s, new_s)
    strong = [familywise_claim_sides(f, s, args.n_boot) for f, s in ((args.old, old_s), (args.new, new_s))]
    broken = broken_claims(claims, *strong)
    moved = [m for m in metrics if not m["equivalent"]]
    moved_fw = [m for m in metrics if not m["equivalent_familywise"]]
    per_interval = not moved and not claims
    familywise = not moved_fw and not broken
    res = {"old": str(args.old), "new": str(args.new), "margins": MARGINS, "n_boot": args.n_boot,
           "seeds_by_position": args.seeds_by_position, "familywise_level_metrics": familywise_level(len(metrics)),
           "metrics": metrics, "claims_changed": claims, "claims_broken_familywise": broken,
           "equivalent_per_interval": per_interval, "equivalent": familywise}
    for m in moved:
        print(f"moved: {m['method']} {m['metric']}: {m['difference']:+.4f} [{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}] "
              f"(margin {m['margin']}; family-wise [{m['ci_familywise'][0]:+.4f}, {m['ci_familywise'][1]:+.4f}]"
              f"{'' if m['equivalent_familywise'] else ' MOVED'})")
    for c in claims:
        b = next((x for x in broken if (x["method"], x["reference"], x["metric"]) == (c["method"], c["reference"],
                                                                                       c["metric"])), None)
        print(f"claim changed: {c['method']} - {c['reference']} {c['metric']}: side {c['old']:+d} -> {c['new']:+d}"
              + (" BROKEN (family-wise rule)" if b else ""))
    print(f"{len(metrics)} metrics, {len(moved)} moved beyond their margin at 95% ({len(moved_fw)} at the family-wise "
          f"level); {len(claims)} paired claims changed side at 95% ({len(broken)} broken by the family-wise rule)")
    print(f"per-interval rule: {'equivalent' if per_interval else 'NOT equivalent'}; "
          f"family-wise rule: {'EQUIVALENT' if familywise else 'NOT equivalent'}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if familywise else 1


if __name__ == "__main__":
    sys.exit(main())
