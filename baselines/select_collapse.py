"""The pre-registered selection of GRPO's and SDSD's settings on the `collapse` preset (issue 24;
`baselines/preregistration.md` section 4 and its amendment 3).

Every cell is (method, lr, [EMA decay,] task seed, selection seed); it trains the longest step
count of the grid once with `train.horizons` at the shorter ones (bit for bit the shorter runs),
then evaluates each horizon's kept checkpoint on every `id_val` pair (n = 128, temperature 1, the
cell seed's evaluation stream `eval_trained`, as `reproduce` evaluates). Only `id_val` pass@1 is
measured: the rule reads nothing else. Resumable: a cell with its `selection.json` is skipped, a
cell interrupted mid-training continues from its last checkpoint (or, when the code's config has
grown fields since, is trained again from the start).

    python baselines/select_collapse.py --stage lr_steps --jobs 2      # both methods, SDSD at 0.95
    python baselines/select_collapse.py --stage extend --extend grpo:1.2e-4:480,60,120,240 --jobs 2
                                                                       # the edge rule's extra cells
    python baselines/select_collapse.py --stage decay --jobs 2         # SDSD's decay at the chosen lr x steps
    python baselines/select_collapse.py --table                        # the table and the rule's choices

Writes `ROOT/cells/<cell>/` (a train run folder plus `selection.json`) and, with `--table`,
`baselines/collapse_selection.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import mitigate
from mitigate.core.resume import ResumeError
from mitigate.core.seeding import torch_stream
from mitigate.policies import load_policy
from mitigate.recipes.common import run_in_pool
from mitigate.rollout import generate
from mitigate.tasks import make_task

HERE = Path(__file__).resolve().parent
TASK_SEEDS = (0, 1, 2)
SELECTION_SEEDS = (100, 101)
LRS = (7.5e-6, 1.5e-5, 3e-5, 6e-5)
STEPS = (60, 120, 240)
DECAYS = (0.9, 0.95, 0.99)
DEFAULT_DECAY = 0.95
TIE = 0.005  # settings within this of the best mean id_val pass@1 are tied
SAMPLES = 128


def objective(method: str, decay: float | None) -> dict:
    return {"name": "grpo"} if method == "grpo" else {"name": "sdsd", "teacher": "ema", "ema_decay": decay}


def cell_name(method: str, lr: float, decay: float | None, task_seed: int, seed: int, steps: int) -> str:
    d = f"-d{decay:g}" if decay is not None else ""
    return f"{method}-lr{lr:g}{d}-n{steps}-t{task_seed}-s{seed}"


def run_cell(root: str, method: str, lr: float, decay: float | None, task_seed: int, seed: int,
             steps: list[int]) -> str:
    """Train max(steps) with the others as horizons; id_val pass@1 of each horizon's checkpoint."""
    longest, shorter = max(steps), sorted(s for s in steps if s != max(steps))
    folder = Path(root) / "cells" / cell_name(method, lr, decay, task_seed, seed, longest)
    done = folder / "selection.json"
    if done.is_file():
        return str(folder)
    cfg = mitigate.load_config(preset="collapse", overrides=[
        f"task.seed={task_seed}", f"seed={seed}", f"train.lr={lr!r}", f"train.steps={longest}",
        f"train.horizons={json.dumps(shorter)}", f"train.objective={json.dumps(objective(method, decay))}"])
    t0 = time.time()
    base = Path(root) / f"base_t{task_seed}"
    try:
        mitigate.train(cfg, base, folder, quiet=True, resume=True)
    except ResumeError:  # a cell interrupted under an older revision's config: trained again from the start
        mitigate.train(cfg, base, folder, quiet=True, overwrite=True)
    t_train = time.time() - t0
    task = make_task(cfg.task)
    prompts = task.prompts(task.val_split)
    result = {"method": method, "lr": lr, "ema_decay": decay, "task_seed": task_seed, "seed": seed,
              "n_prompts": len(prompts), "samples": SAMPLES, "train_seconds": round(t_train, 1), "id_val": {}}
    for h in steps:
        ckpt = folder / "checkpoint" if h == longest else folder / f"horizon-{h}" / "checkpoint"
        policy, _ = load_policy(ckpt)
        r = generate(policy, task, prompts, SAMPLES, 1.0, torch_stream(seed, "eval_trained"), cfg.eval.batch_size)
        kept = json.loads((ckpt.parent / "kept.json").read_text())
        result["id_val"][str(h)] = {"pass_at_1": float(np.mean(r.correct)), "kept_step": kept["step"]}
    done.write_text(json.dumps(result, indent=1))
    return str(folder)


def cells_for(stage: str, chosen: dict | None) -> list[tuple]:
    if stage == "lr_steps":
        return [(m, lr, None if m == "grpo" else DEFAULT_DECAY, t, s, list(STEPS))
                for m in ("sdsd", "grpo") for lr in LRS for t in TASK_SEEDS for s in SELECTION_SEEDS]
    if stage == "decay":
        lr, steps = chosen["sdsd"]["lr"], chosen["sdsd"]["steps"]
        return [("sdsd", lr, d, t, s, [steps]) for d in DECAYS if d != DEFAULT_DECAY
                for t in TASK_SEEDS for s in SELECTION_SEEDS]
    raise SystemExit(f"unknown stage {stage!r}; choose lr_steps or decay")


def collect(root: Path) -> list[dict]:
    """Every (cell, horizon) result; a setting measured by two cells (an extension's longer run has
    the shorter ones as horizons, bit for bit the same runs) counts once."""
    rows, seen = [], set()
    for path in sorted((root / "cells").glob("*/selection.json")):
        r = json.loads(path.read_text())
        for h, v in r["id_val"].items():
            row = {**{k: r[k] for k in ("method", "lr", "ema_decay", "task_seed", "seed")}, "steps": int(h), **v}
            key = tuple(row[k] for k in ("method", "lr", "ema_decay", "task_seed", "seed", "steps"))
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def settings_table(rows: list[dict], method: str) -> list[dict]:
    """One row per setting of `method`: mean id_val pass@1 over the cells that ran it, per task seed."""
    keys = sorted({(r["lr"], r["steps"], r["ema_decay"]) for r in rows if r["method"] == method},
                  key=lambda k: (k[0], k[1], k[2] or 0))
    out = []
    for lr, steps, decay in keys:
        mine = [r for r in rows
                if r["method"] == method and (r["lr"], r["steps"], r["ema_decay"]) == (lr, steps, decay)]
        per_task = {t: float(np.mean([r["pass_at_1"] for r in mine if r["task_seed"] == t])) for t in TASK_SEEDS
                    if any(r["task_seed"] == t for r in mine)}
        out.append({"lr": lr, "steps": steps, "ema_decay": decay, "n_cells": len(mine),
                    "mean_pass_at_1": float(np.mean([r["pass_at_1"] for r in mine])), "per_task_seed": per_task,
                    "kept_steps": sorted(r["kept_step"] for r in mine)})
    return out


def choose(table: list[dict], full: int) -> dict:
    """The rule: highest mean over complete settings; within TIE of it, the smaller lr, then fewer steps,
    then the decay closest to 0.95."""
    complete = [r for r in table if r["n_cells"] == full]
    best = max(r["mean_pass_at_1"] for r in complete)
    tied = [r for r in complete if r["mean_pass_at_1"] >= best - TIE]
    pick = min(tied, key=lambda r: (r["lr"], r["steps"], abs((r["ema_decay"] or DEFAULT_DECAY) - DEFAULT_DECAY)))
    lrs, steps = sorted({r["lr"] for r in complete}), sorted({r["steps"] for r in complete})
    edge = [f"lr {pick['lr']:g} is the grid's {'smallest' if pick['lr'] == lrs[0] else 'largest'}"
            for _ in [0] if pick["lr"] in (lrs[0], lrs[-1])]
    edge += [f"steps {pick['steps']} is the grid's {'fewest' if pick['steps'] == steps[0] else 'most'}"
             for _ in [0] if pick["steps"] in (steps[0], steps[-1])]
    return {**pick, "best_mean": best, "tied": len(tied), "on_edge": edge}


def markdown(tables: dict, choices: dict) -> str:
    lines = []
    for method, table in tables.items():
        lines += [f"### {method}", "", "| lr | steps | EMA decay | cells | mean id_val pass@1 | task 0 / 1 / 2 | "
                  "kept steps (best probe) |", "|---|---|---|---|---|---|---|"]
        for r in table:
            per = " / ".join(f"{r['per_task_seed'].get(t, float('nan')):.3f}" for t in TASK_SEEDS)
            pick = choices.get(method)
            mark = ""
            if pick and all(pick[k] == r[k] for k in ("lr", "steps", "ema_decay")):
                mark = " **chosen**"
                if pick["on_edge"]:
                    mark = (" **chosen** (on the extended grid's edge; the rule extends once)" if pick["extended"]
                            else " **best, on the grid's edge: extension due**")
            lines.append(f"| {r['lr']:g} | {r['steps']} | {r['ema_decay'] if r['ema_decay'] is not None else '-'} | "
                         f"{r['n_cells']} | {r['mean_pass_at_1']:.4f}{mark} | {per} | "
                         f"{', '.join(map(str, r['kept_steps']))} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/collapse_sel")
    ap.add_argument("--stage", choices=("lr_steps", "decay", "extend"))
    ap.add_argument("--extend", nargs="*", default=[],
                    help="extra cells for the edge rule: METHOD:LR:STEPS[:DECAY] (STEPS: longest,shorter,...)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    root = Path(args.root)
    if args.stage:
        chosen = json.loads((HERE / "collapse_selection.json").read_text())["chosen"] if args.stage == "decay" else None
        if args.stage == "extend":
            cells = []
            for spec in args.extend:
                m, lr, steps, *d = spec.split(":")
                cells += [(m, float(lr), float(d[0]) if d else (None if m == "grpo" else DEFAULT_DECAY), t, s,
                           [int(x) for x in steps.split(",")]) for t in TASK_SEEDS for s in SELECTION_SEEDS]
        else:
            cells = cells_for(args.stage, chosen)
        jobs = {cell_name(m, lr, d, t, s, max(st)): (str(root), m, lr, d, t, s, st) for m, lr, d, t, s, st in cells}
        from tqdm.auto import tqdm
        with tqdm(total=len(jobs), desc=f"selection {args.stage}", unit="cell") as bar:
            run_in_pool(run_cell, jobs, args.jobs, [], bar, "selection cells failed: {key}")
    if args.table:
        rows = collect(root)
        full = len(TASK_SEEDS) * len(SELECTION_SEEDS)
        tables = {m: settings_table(rows, m) for m in ("grpo", "sdsd") if any(r["method"] == m for r in rows)}
        choices = {}
        for m, table in tables.items():
            at_default = [r for r in table if m == "grpo" or r["ema_decay"] == DEFAULT_DECAY]
            extended = any(r["lr"] not in LRS or r["steps"] not in STEPS for r in table)
            choices[m] = {**choose(at_default, full), "extended": extended}
        if "sdsd" in choices:
            same = [r for r in tables["sdsd"] if (r["lr"], r["steps"]) == (choices["sdsd"]["lr"],
                                                                          choices["sdsd"]["steps"])]
            if len({r["ema_decay"] for r in same if r["n_cells"] == full}) == len(DECAYS):
                choices["sdsd"] = {**choose(same, full), "on_edge": choices["sdsd"]["on_edge"],
                                   "extended": choices["sdsd"]["extended"]}
        out = {"rule": __doc__.split("\n\n")[0], "tie": TIE, "samples": SAMPLES, "task_seeds": TASK_SEEDS,
               "selection_seeds": SELECTION_SEEDS, "tables": tables, "chosen": choices}
        (HERE / "collapse_selection.json").write_text(json.dumps(out, indent=1) + "\n")
        (HERE / "collapse_selection.md").write_text(markdown(tables, choices))
        print(markdown(tables, choices))
        print(json.dumps(choices, indent=1))


if __name__ == "__main__":
    main()
