"""How long a config error takes to answer from a cold start (issue 29: under 1 second), as a ratio
against `mitigate --version` measured in the same run.

Each case is one fresh `mitigate` process (the installed console script beside this interpreter),
timed from spawn to exit; the cases run in interleaved rounds (every case once per round, in a
shuffled order) so that load from other jobs falls on all of them alike, and each case reports the
median over the rounds and its ratio to the median of `mitigate --version` (argument parsing only:
the floor of any command). Every config case must exit 2 with its expected words in the message;
`--out` names a folder that is never written.

    .venv/bin/python benchmarks/config_latency.py [--rounds 7] [--out benchmarks/results/config_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "mitigate"
TRAIN = ["train", "--preset", "smoke", "--init", "x"]
CASES = {  # name -> (argv without --out, expected exit status, words the message must hold)
    "version": (["--version"], 0, "mitigate"),
    "bad value train.steps=-1": ([*TRAIN, "--set", "train.steps=-1"], 2, "'train.steps' must be >= 1"),
    "bad value train.lr=abc": ([*TRAIN, "--set", "train.lr=abc"], 2, "'train.lr' must be a number"),
    "bad value eval.samples=0": ([*TRAIN, "--set", "eval.samples=0"], 2, "'eval.samples' must be >= 1"),
    "misspelt objective": ([*TRAIN, "--set", "train.objective.name=sdsd_marginl"], 2,
                           "did you mean 'sdsd_marginal'? registered: grpo"),
    "unknown key": ([*TRAIN, "--set", "train.lrr=1"], 2, "unknown config key 'train.lrr'"),
    "unknown preset": (["train", "--preset", "smok", "--init", "x"], 2, "unknown preset 'smok'"),
    "bad objective field (imports it)": ([*TRAIN, "--set", "train.objective={name: grpo, clip_eps: -1}"], 2,
                                         "'train.objective.clip_eps' must be >="),
}


def run_once(argv: list[str], out: Path) -> tuple[float, int, str]:
    full = [str(BIN), *argv] + ([] if argv == ["--version"] else ["--out", str(out)])
    t0 = time.perf_counter()
    done = subprocess.run(full, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0, done.returncode, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0, help="shuffles the order of the cases within each round")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "config_latency.json"))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "never-written"
        for _ in range(args.rounds):
            order = list(CASES)
            rng.shuffle(order)
            for name in order:
                argv_, code, words = CASES[name]
                wall, rc, text = run_once(argv_, out)
                if rc != code or words not in text:
                    print(f"{name}: exit {rc}, expected {code} with {words!r}:\n{text}", file=sys.stderr)
                    return 1
                seconds[name].append(wall)
        assert not out.exists()
    ref = statistics.median(seconds["version"])
    rows = {name: {"median_s": round(statistics.median(s), 4), "min_s": round(min(s), 4), "max_s": round(max(s), 4),
                   "ratio_to_version": round(statistics.median(s) / ref, 3)} for name, s in seconds.items()}
    result = {"rounds": args.rounds, "reference": "mitigate --version", "cases": rows,
              "command": f".venv/bin/python benchmarks/config_latency.py --rounds {args.rounds}",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, rows))
    print(f"{'case':<{width}}  median s  ratio to --version  (min-max s), {args.rounds} rounds")
    for name, r in rows.items():
        spread = f"({r['min_s']:.3f}-{r['max_s']:.3f})"
        print(f"{name:<{width}}  {r['median_s']:8.3f}  {r['ratio_to_version']:18.2f}  {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
