"""What issue 23's instruments add to a comparison's wall time, as ratios measured in one process.

On the base of a finished `reproduce` folder (its config and checkpoint), all in this process with
one torch thread, interleaved over rounds (median):
  * `plain`: one evaluation without the instruments (eval.diversity_r = 0, no ratio test): the
    reference, the work every evaluated model already costs;
  * `instrumented`: the same evaluation with them (counts among r and the ratio rows);
  * `reference`: building the ratio-test reference once (every correct path, pcmi under the base);
  * `sharpening`: one evaluation of the base at a lower temperature (one row of the control).
The comparison's evaluations and where they run come from its summary: models evaluated (base, each
method x seed, each trade-off point) share the `--jobs` workers; the reference and the sharpening
rows run in the parent before the pool. Added wall time ≈ reference + S x sharpening +
E x (instrumented - plain) / jobs, reported as a share of the run's own wall time (`summary.json`)
and as multiples of `plain`, so load on the machine hits both sides alike.

    .venv/bin/python benchmarks/instruments_cost.py runs/paper-instruments [--rounds 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from mitigate import config as C
from mitigate.core.seeding import torch_stream
from mitigate.policies import load_policy
from mitigate.recipes.evaluate import evaluate_rows, id_split, ratio_reference, split_prompts
from mitigate.tasks import make_task


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished reproduce folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="the --jobs the comparison ran with")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run)
    summary = json.loads((run / "summary.json").read_text())
    cfg = C.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    task = make_task(cfg.task)
    policy, _ = load_policy(run / "base" / "checkpoint", "cpu")
    prompts = split_prompts(task, id_split(task, cfg.eval), cfg.eval.max_prompts)
    plain_cfg = C.build(C.EvalConfig, {**C.to_dict(cfg.eval), "diversity_r": 0, "ratio_test": False})
    temps = cfg.reproduce.sharpening or [0.7]
    sharp_cfg = C.build(C.EvalConfig, {**C.to_dict(cfg.eval), "temperature": min(temps)})
    times = {"plain": [], "instrumented": [], "reference": [], "sharpening": []}
    for _ in range(args.rounds):
        t, ref = timed(lambda: ratio_reference(policy, task, prompts, cfg.eval.batch_size))
        times["reference"].append(t)
        for key, eval_cfg, reference in (("plain", plain_cfg, None), ("instrumented", cfg.eval, ref),
                                         ("sharpening", sharp_cfg, ref)):
            times[key].append(timed(lambda c=eval_cfg, r=reference: evaluate_rows(
                policy, task, c, torch_stream(0, "eval"), reference=r))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    methods = summary["methods"]
    controls = [m for m in methods if m.startswith("base@t")]
    n_trained = sum(len(m["seeds"]) for n, m in methods.items() if n != "base" and n not in controls)
    n_points = sum((len(points) - 2) * len(methods[name]["seeds"])  # interior points: weaker updates per seed
                   for name, points in summary.get("tradeoff", {}).get("curves", {}).items())
    evaluated = 1 + n_trained + n_points  # base, every trained run, every trade-off point
    added = med["reference"] + len(controls) * med["sharpening"] + \
        evaluated * (med["instrumented"] - med["plain"]) / args.jobs
    without = summary["wall_seconds"] - added
    out = {"run": str(run), "median_seconds": med, "rounds": args.rounds, "evaluated_models": evaluated,
           "sharpening_rows": len(controls), "jobs": args.jobs,
           "instrumented_over_plain": med["instrumented"] / med["plain"],
           "reference_over_plain": med["reference"] / med["plain"],
           "added_seconds": added, "run_wall_seconds": summary["wall_seconds"],
           "added_share_of_run_without_instruments": added / without}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
