"""Cost model of a GRPO training step: step time against rollouts per step, group size,
completion length and model width (four or more points each), and a least-squares fit a user can
plug their own shapes into.

Every point trains from a randomly initialised base (`pretrain.steps=0`), which never learns to
stop, so every rollout runs to the completion limit and the token count is known exactly; the
compute of a GRPO step does not depend on the rewards (no step or group is skipped). The fit is
then checked against real runs of the default preset from its pretrained base, where rollouts stop
at EOS. One process, one torch thread by default (as every run of `mitigate reproduce` and
`mitigate sweep`), mean over the timed steps (the first two are warm-up).

    .venv/bin/python benchmarks/cost_model.py                        # ~6 min on 2 cores
    .venv/bin/python benchmarks/cost_model.py --base runs/reproduce-default/base

The fit splits a step into a per-step overhead and a per-token cost that grows with the width
(matmuls ~ width^2 per token, attention and elementwise work ~ width):

    t = a + tokens * (b + c * width + d * width^2 + e * length * width)

by least squares on every measured point, with `tokens` = the rollouts' prompt + completion
tokens per step (`budget.json: backward_tokens` / steps: every rollout token is scored with grad
once per step) and `length` = tokens per sequence (attention and the decode loop grow with it).
`--refit FILE` refits a saved result without measuring again.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mitigate import config as C
from mitigate.recipes.pretrain import pretrain
from mitigate.recipes.train import train

DEFAULTS = {"prompts": 64, "group": 8, "max_path_len": 6, "width": 128}
AXES = {
    "prompts": [16, 32, 64, 128],  # rollouts per step = prompts x group
    "group": [4, 8, 16, 32],
    "max_path_len": [6, 10, 14, 18],  # completion limit = max_path_len + 1 (EOS)
    "width": [64, 128, 256, 384],
}


def overrides(point: dict, steps: int) -> dict:
    width = point["width"]
    return {"train.prompts_per_step": point["prompts"], "train.group_size": point["group"],
            "task.max_path_len": point["max_path_len"], "model.n_embd": width,
            "model.n_head": 4, "train.steps": steps, "train.eval_every": 10_000, "train.save_every": 0,
            "pretrain.steps": 0}


def step_seconds(run: Path, warmup: int) -> list[float]:
    """Per-step times after the warm-up, from metrics.jsonl's `seconds` (the run's clock, cumulative,
    rounded to 10 ms)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    clock = [r["seconds"] for r in rows if "seconds" in r and r["step"] >= warmup]
    return [b - a for a, b in zip(clock, clock[1:])]


def measure(point: dict, steps: int, warmup: int, work: Path, base: Path | None = None) -> dict:
    cfg = C.load(preset="default")
    cfg = C.with_overrides(cfg, overrides(point, steps) if base is None else
                           {"train.steps": steps, "train.eval_every": 10_000, "train.save_every": 0,
                            # a base made before the default preset's erf GELU (issue 28) keeps tanh
                            "model.activation": json.loads((base / "config.json").read_text())["activation_function"]})
    name = "-".join(f"{k}{v}" for k, v in point.items()) + ("-trained" if base else "")
    if base is None:
        base = pretrain(cfg, work / f"base-{name}", quiet=True) / "checkpoint"
    t0 = time.perf_counter()
    run = train(cfg, base, work / name, quiet=True, method="grpo")
    wall = time.perf_counter() - t0
    secs = step_seconds(run, warmup)
    budget = json.loads((run / "budget.json").read_text())
    rollouts = budget["rollouts"] / steps
    tokens = budget["backward_tokens"] / steps  # the rollouts' tokens, prompts included
    # the mean over the timed steps (the clock's 10 ms rounding cancels in the sum), with the
    # per-step min and max
    return {**point, "rollouts": rollouts, "tokens": tokens, "mean_s": sum(secs) / len(secs),
            "min_s": min(secs), "max_s": max(secs), "timed_steps": len(secs), "wall_s": round(wall, 1)}


TERMS = ("a_s", "b_s_per_token", "c_s_per_token_width", "d_s_per_token_width2", "e_s_per_token_length_width")


def features(tokens: float, rollouts: float, width: float) -> list[float]:
    length = tokens / rollouts  # tokens per sequence: attention and the decode loop grow with it
    return [1.0, tokens, tokens * width, tokens * width ** 2, tokens * length * width]


def fit(points: list[dict]) -> dict:
    """Least squares t = a + tokens (b + c w + d w^2 + e L w) on every measured point, L = tokens
    per sequence."""
    X = np.array([features(p["tokens"], p["rollouts"], p["width"]) for p in points])
    y = np.array([p["mean_s"] for p in points])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    pred = X @ coef
    return {**dict(zip(TERMS, coef.tolist())), "max_rel_error": float(np.max(np.abs(pred - y) / y)),
            "predicted": pred.tolist()}


def predict(f: dict, tokens: float, rollouts: float, width: float) -> float:
    return float(np.dot([f[t] for t in TERMS], features(tokens, rollouts, width)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="training steps per point (the first --warmup not timed)")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped before timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as reproduce and sweep runs)")
    ap.add_argument("--base", type=Path, help="the default preset's pretrained base run: adds the check of the "
                                              "fit against real (EOS-stopping) steps")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_model.json"))
    ap.add_argument("--refit", type=Path, help="refit the points of a saved result (no measuring) and rewrite it")
    a = ap.parse_args()
    if a.refit is not None:
        saved = json.loads(a.refit.read_text())
        saved["fit"] = f = fit(saved["points"])
        if saved.get("check_trained_base"):
            c = saved["check_trained_base"]
            c["predicted_s"] = predict(f, c["tokens"], c["rollouts"], c["width"])
        a.refit.write_text(json.dumps(saved, indent=2) + "\n")
        report(f, saved.get("check_trained_base"), a.refit)
        return
    torch.set_num_threads(a.threads)
    points, t0 = [], time.time()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        seen = set()
        for axis, values in AXES.items():
            for v in values:
                point = {**DEFAULTS, axis: v}
                key = tuple(point.items())
                if key in seen:  # the default point sits on every axis: measured once
                    points.append({**next(p for p in points if tuple((k, p[k]) for k in DEFAULTS) == key),
                                   "axis": axis})
                    continue
                seen.add(key)
                points.append({**measure(point, a.steps, a.warmup, work), "axis": axis})
                p = points[-1]
                print(f"{axis:>12} {v:>4}: {p['mean_s']:.3f} s/step (min {p['min_s']:.3f}, max {p['max_s']:.3f}), "
                      f"{p['tokens']:.0f} tokens/step  [{time.time() - t0:.0f} s]", flush=True)
        f = fit(points)
        check = None
        if a.base is not None:
            base = a.base / "checkpoint" if (a.base / "checkpoint").is_dir() else a.base
            real = measure(dict(DEFAULTS), a.steps + 4, a.warmup, work, base=base)
            check = {**real, "predicted_s": predict(f, real["tokens"], real["rollouts"], real["width"])}
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": a.threads,
                       "torch": torch.__version__},
           "steps": a.steps, "warmup": a.warmup, "points": points, "fit": f, "check_trained_base": check,
           "wall_s": round(time.time() - t0, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    report(f, check, a.out)


def report(f: dict, check: dict | None, path: Path) -> None:
    print(f"fit: t = {f['a_s']:.3f} s + tokens x ({f['b_s_per_token']:.3g} + {f['c_s_per_token_width']:.3g} w "
          f"+ {f['d_s_per_token_width2']:.3g} w^2 + {f['e_s_per_token_length_width']:.3g} L w) s; max relative "
          f"error {f['max_rel_error']:.1%} -> {path}")
    if check:
        print(f"default preset from its trained base: {check['mean_s']:.3f} s/step measured, "
              f"{check['predicted_s']:.3f} predicted from {check['tokens']:.0f} tokens/step")


if __name__ == "__main__":
    main()
