"""What `mitigate.integrations.trl.CollapseMonitor` adds to a TRL GRPOTrainer step (issue 27: under
10% at every = 10), as a ratio measured in one run.

One GRPOTrainer run on the tiny random Qwen3 of `tiny:qwen3` (CPU, one torch thread) with the
monitor attached. A timing callback added before the monitor records each step's wall time from
`on_step_begin` to its own `on_step_end` (TRL's generation, scoring and update: the reference), and
the monitor's measurements are timed around `measure`. The overhead is the monitor's total time over
the steps' total time; load on the machine slows both sides alike.

    .venv/bin/python benchmarks/monitor_overhead.py [--steps 40] [--every 10] \
        [--out benchmarks/results/monitor_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import mitigate
from mitigate.integrations.trl import CollapseMonitor
from mitigate.tasks import make_task


class StepTimer(TrainerCallback):
    def __init__(self):
        self.t0, self.steps = None, []

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t0)


class TimedMonitor(CollapseMonitor):
    seconds: list

    def measure(self, model, tokenizer):
        t0 = time.perf_counter()
        out = super().measure(model, tokenizer)
        self.seconds.append(time.perf_counter() - t0)
        return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--samples", type=int, default=8, help="the monitor's samples per probe prompt")
    ap.add_argument("--prompts", type=int, default=16, help="the monitor's probe prompts")
    ap.add_argument("--out", default="benchmarks/results/monitor_overhead.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from mitigate.policies.hf import load_tokenizer, tiny_folder

    folder = tiny_folder("tiny:qwen3")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = load_tokenizer(folder)
    task = make_task(mitigate.load_config(preset="sciqa-smoke").task)
    questions = [tokenizer.decode(p.tokens, skip_special_tokens=True) for p in task.prompts(task.train_split)]
    shape = dict(per_device_train_batch_size=16, num_generations=8, max_completion_length=32)
    trl_args = GRPOConfig(output_dir="/tmp/mitigate-monitor-bench", use_cpu=True, max_steps=args.steps,
                          learning_rate=1e-4, logging_steps=10, save_strategy="no", report_to="none",
                          disable_tqdm=True, beta=0.0, seed=0, **shape)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(len(c)) for c in completions]],
                          args=trl_args, train_dataset=Dataset.from_dict({"prompt": questions}),
                          processing_class=tokenizer)
    timer = StepTimer()
    trainer.add_callback(timer)  # before the monitor: a step's time ends before the monitor measures
    monitor = TimedMonitor(task, every=args.every, samples=args.samples, max_prompts=args.prompts)
    monitor.seconds = []
    monitor.attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steps, probes = sum(timer.steps), sum(monitor.seconds)
    res = {"steps": args.steps, "every": args.every, "monitor_samples": args.samples, "monitor_prompts": args.prompts,
           "trl_shape": shape, "model": "tiny:qwen3", "threads": 1, "trl_step_seconds_mean": steps / len(timer.steps),
           "monitor_seconds_mean": probes / max(len(monitor.seconds), 1), "measurements": len(monitor.seconds),
           "overhead": probes / steps, "wall_seconds": round(wall, 1)}
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
