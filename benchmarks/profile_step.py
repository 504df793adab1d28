"""Where a training step's time goes: GRPO and SDSD on the default preset, phase by phase.

Each phase is timed by wrapping the function the training loop calls for it (nothing in the
package changes), with exclusive times: a phase nested in another (the teacher's forward inside
`Teacher.demonstrations`) counts once, for the innermost phase. What no wrapper covers is reported
as "other": the objective's and the KL anchor's tensor math, padding, Python and logging.

    sample           TinyGPT.sample: ancestral sampling with the KV cache (rollouts; no grad)
    verify           the task's verifier on the rollouts
    old log-probs    the sampling policy's token log-probs, no grad (GRPO's ratio denominator)
    reference        the frozen base's scores (the KL anchor's target), no grad
    teacher          demonstration draws and the demonstration-conditioned teacher's scores, no grad
    student forward  the student's scores with grad (one forward per inner epoch)
    backward         accelerator.backward(loss)
    clip + optimizer gradient clipping and the AdamW step
    probe            the periodic evaluation (excluded from the per-step figures)

It also counts the rows every scoring forward was asked for and the distinct ones it ran
(`mitigate.policies.base.distinct_rows`: repeated rollouts and teacher rows run once). From a
trained checkpoint (`--base runs/.../grpo-seed0`) the share of repeats is that of late training.

    .venv/bin/python benchmarks/profile_step.py                       # 10 steps each, default preset
    .venv/bin/python benchmarks/profile_step.py --steps 20 --base runs/reproduce-default/base
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator

from mitigate import config as C
from mitigate.objectives.teacher import Teacher
from mitigate.policies import resolve_checkpoint, tiny_gpt
from mitigate.policies.tiny_gpt import TinyGPT
from mitigate.recipes import train as train_recipe
from mitigate.recipes.pretrain import pretrain
from mitigate.tasks.graph import GraphTask

PHASES = ("sample", "verify", "old log-probs", "reference", "teacher", "student forward", "backward",
          "clip + optimizer", "probe")


class PhaseTimer:
    """Exclusive wall time per phase: a phase's time excludes the phases nested in it."""

    def __init__(self):
        self.total = dict.fromkeys(PHASES, 0.0)
        self.stack: list[list] = []  # [label, start, time spent in nested phases]

    @contextmanager
    def phase(self, label: str | None):
        if label is None or any(f[0] == "probe" for f in self.stack):  # belongs to the enclosing phase
            yield
            return
        frame = [label, time.perf_counter(), 0.0]
        self.stack.append(frame)
        try:
            yield
        finally:
            self.stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.total[label] += elapsed - frame[2]
            if self.stack:
                self.stack[-1][2] += elapsed

    def wrap(self, owner, name: str, label):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            with self.phase(label(*args) if callable(label) else label):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)


def score_label(timer: PhaseTimer):
    def label(policy, *args):
        if timer.stack and timer.stack[-1][0] == "teacher":
            return None
        if torch.is_grad_enabled():
            return "student forward"
        return "old log-probs" if policy.model.training else "reference"
    return label


def instrument(timer: PhaseTimer) -> None:
    timer.wrap(TinyGPT, "sample", "sample")
    timer.wrap(GraphTask, "verify", "verify")
    timer.wrap(TinyGPT, "scores", score_label(timer))
    timer.wrap(TinyGPT, "token_logprobs", score_label(timer))
    timer.wrap(Teacher, "demonstrations", "teacher")
    timer.wrap(Accelerator, "backward", "backward")
    timer.wrap(Accelerator, "clip_grad_norm_", "clip + optimizer")
    timer.wrap(torch.optim.AdamW, "step", "clip + optimizer")
    timer.wrap(train_recipe, "probe", "probe")


class RowCounter:
    """Rows asked for and distinct rows run by the scoring forwards (wraps `tiny_gpt.distinct_rows`)."""

    def __init__(self):
        self.rows = self.distinct = 0
        self.original = tiny_gpt.distinct_rows

    def __call__(self, model, contexts, tokens, mask):
        first, index = self.original(model, contexts, tokens, mask)
        self.rows += len(contexts)
        self.distinct += len(contexts) if first is None else len(first)
        return first, index


def profile(method: str, objective: dict, base: Path, steps: int, work: Path, preset: str = "default") -> dict:
    timer, counter = PhaseTimer(), RowCounter()
    # the base's activation: a base made before the default preset's erf GELU (issue 28) keeps tanh
    activation = json.loads((resolve_checkpoint(base) / "config.json").read_text()).get("activation_function")
    cfg = C.load(preset=preset, overrides=[f"train.steps={steps}", f"train.eval_every={steps + 1}",
                                              "train.save_every=0", f"train.objective={json.dumps(objective)}",
                                              f"model.activation={activation}"])
    saved = {k: getattr(o, n) for k, (o, n) in _targets().items()}
    instrument(timer)
    tiny_gpt.distinct_rows = counter
    try:
        t0 = time.perf_counter()
        train_recipe.train(cfg, base, work / method, quiet=True, method=method)
        wall = time.perf_counter() - t0
    finally:
        for k, (o, n) in _targets().items():
            setattr(o, n, saved[k])
        tiny_gpt.distinct_rows = counter.original
    rows = [json.loads(x) for x in (work / method / "metrics.jsonl").read_text().splitlines()]
    loop = rows[-1]["seconds"]  # the loop's own clock, stamped before the last step's probe
    per_step = {k: v / steps for k, v in timer.total.items() if k != "probe"}
    per_step["other"] = max(loop / steps - sum(per_step.values()), 0.0)
    return {"method": method, "steps": steps, "wall_seconds": wall, "loop_seconds": loop,
            "seconds_per_step": loop / steps, "phases_per_step": per_step,
            "scored_rows": counter.rows, "distinct_rows": counter.distinct}


def _targets():
    return {"sample": (TinyGPT, "sample"), "verify": (GraphTask, "verify"), "scores": (TinyGPT, "scores"),
            "token_logprobs": (TinyGPT, "token_logprobs"), "demos": (Teacher, "demonstrations"),
            "backward": (Accelerator, "backward"), "clip": (Accelerator, "clip_grad_norm_"),
            "adamw": (torch.optim.AdamW, "step"), "probe": (train_recipe, "probe")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="training steps per method")
    ap.add_argument("--base", type=Path, help="base run folder (default: pretrain one with the default preset)")
    ap.add_argument("--preset", default="default", help="the preset whose task and training settings are profiled")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_step.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        base = a.base or pretrain(C.load(preset=a.preset), work / "base", quiet=True)
        results = [profile("grpo", {"name": "grpo"}, base, a.steps, work, a.preset),
                   profile("sdsd", {"name": "sdsd"}, base, a.steps, work, a.preset)]
    print(f"seconds per step ({a.steps} steps, {a.threads} threads, {a.preset} preset)")
    print(f"{'phase':18s}" + "".join(f"{r['method']:>16s}" for r in results))
    for phase in [*[p for p in PHASES if p != "probe"], "other"]:
        cells = [f"{r['phases_per_step'][phase]:7.3f} ({r['phases_per_step'][phase] / r['seconds_per_step']:4.0%})"
                 for r in results]
        print(f"{phase:18s}" + "".join(f"{c:>16s}" for c in cells))
    print(f"{'step':18s}" + "".join(f"{r['seconds_per_step']:16.3f}" for r in results))
    print(f"{'distinct rows':18s}" + "".join(f"{r['distinct_rows'] / max(r['scored_rows'], 1):16.0%}" for r in results)
          + "   (of the rows the scoring forwards were given)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"threads": a.threads, "results": results}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
