"""Issue 25: each new row's own setting, chosen on the `paper` preset's id_val pairs with the
unreported seeds 100 and 101, by the rule written in `baselines/ablations/field_rows_select.yaml`
before any cell ran: the highest mean id_val pass@1; settings within 0.005 of the best tie, and a
tie goes to the setting closest to the row's plain method (the end of its grid where the option
vanishes: pass@k's k -> 1, the unlikeliness beta -> 0, clip_high -> GRPO's 0.2, the covariance
share -> 0, the interpolation lambda -> 0 (plain SDSD), top-k -> the full vocabulary; `rft`, with no
plain method, to fewer samples, the cheaper). A choice at the far end of its grid (away from the
plain method), where the domain allows one more step, is an edge: one more cell beyond it is run and
the rule is read again on the larger grid. The step past the near end is the plain method itself,
already a row of the comparison, so a choice there extends nothing.

    python baselines/select_field_rows.py runs/ablations/field_rows_select [--write]

Prints the table (every cell: id_val pass@1 mean and per seed, concepts, forward tokens per run)
with the choice and the edge verdict per row; `--write` also writes
`baselines/field_rows_selection.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIE = 0.005
# row -> (cell prefix, setting values in order from the plain method's end, can the grid pass its far end?)
ROWS = {
    "grpo_passk": ("passk_", "k", False),          # k <= the group size (8): the grid already ends there
    "grpo_unlikely": ("unlikely_", "beta", True),
    "grpo_clip_higher": ("clip_high_", "clip_eps_high", True),
    "grpo_clip_cov": ("clip_cov_", "cov_clip_frac", True),
    "grpo_kl_cov": ("kl_cov_", "cov_kl_frac", True),
    "rft": ("rft_", "samples", True),
    "sdsd_interp": ("interp_", "lam", True),
    "sdsd_forward_kl_top20": ("fkl_top", "divergence_topk", True),
}
PLAIN_AT_HIGH = {"sdsd_forward_kl_top20"}  # top-k: the plain method (full vocabulary) is the large-k end


def cells(summary: dict, prefix: str) -> list[tuple[float, str]]:
    out = [(float(name[len(prefix):]), name) for name in summary["methods"] if name.startswith(prefix)]
    return sorted(out)


def choose(summary: dict) -> list[dict]:
    rows = []
    for row, (prefix, setting, open_far_end) in ROWS.items():
        grid = cells(summary, prefix)
        if not grid:
            continue
        if row in PLAIN_AT_HIGH:
            grid = grid[::-1]
        p1 = {name: summary["methods"][name]["id"]["pass_at_k"]["1"] for _, name in grid}
        best = max(p1.values())
        chosen_value, chosen = next((v, n) for v, n in grid if p1[n] >= best - TIE)  # nearest the plain end
        position = [n for _, n in grid].index(chosen)
        far_edge = position == len(grid) - 1 and open_far_end
        rows.append({"row": row, "setting": setting, "grid": [v for v, _ in grid], "chosen": chosen_value,
                     "cell": chosen, "id_val_pass1": p1[chosen], "best_id_val_pass1": best,
                     "edge": far_edge})
    return rows


def table(summary: dict, choices: list[dict]) -> str:
    chosen = {c["cell"] for c in choices}
    lines = ["| row | cell | id_val pass@1 | per seed | concepts@r | forward tokens / run | chosen |",
             "|---|---|---:|---|---:|---:|---|"]
    for c in choices:
        prefix = ROWS[c["row"]][0]
        for _, name in cells(summary, prefix):
            m = summary["methods"][name]
            seeds = ", ".join(f"{s['id']['pass_at_k']['1']:.3f}" for s in m.get("per_seed", []))
            conc = m["id"].get("concepts_at_r", m["id"].get("concepts"))
            tokens = m.get("budget", {}).get("forward_tokens")
            mark = ("**chosen**" + (" (edge: extend)" if c["edge"] else "")) if name in chosen else ""
            tok = "-" if tokens is None else f"{tokens:,.0f}"
            p1 = m["id"]["pass_at_k"]["1"]
            lines.append(f"| {c['row']} | {name} | {p1:.3f} | {seeds} | {conc:.2f} | {tok} | {mark} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="selection reproduce folder(s); later ones add cells")
    ap.add_argument("--write", action="store_true", help="write baselines/field_rows_selection.{json,md}")
    a = ap.parse_args(argv)
    summary = {"methods": {}}
    for folder in a.folders:
        f = folder / "summary.json"
        if not f.is_file():
            print(f"select_field_rows: '{folder}' holds no summary.json", file=sys.stderr)
            return 2
        summary["methods"].update(json.loads(f.read_text())["methods"])
    choices = choose(summary)
    text = table(summary, choices)
    print(text)
    for c in choices:
        print(f"{c['row']}: {c['setting']} = {c['chosen']:g} (id_val pass@1 {c['id_val_pass1']:.3f}, best "
              f"{c['best_id_val_pass1']:.3f})" + (f"; far edge of {c['grid']}: extend" if c["edge"] else ""))
    if a.write:
        (HERE / "field_rows_selection.json").write_text(json.dumps({"folders": [str(f) for f in a.folders],
                                                                      "tie": TIE, "choices": choices}, indent=1) + "\n")
        (HERE / "field_rows_selection.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
