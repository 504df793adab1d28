"""Two CPU processes (gloo) train the `hf` policy (the tiny Qwen3 of the sciqa-smoke preset) for two
steps through `accelerate.debug_launcher`: each process samples its own prompts, DDP averages the
gradients, and both end with identical weights that moved away from the base checkpoint.

(`accelerate launch --cpu --num_processes 2` would silently run one process; the debug launcher
and `torchrun` start two.) The debug launcher uses a fixed rendezvous: never run two
multi-process tests at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mitigate import config as C
from mitigate.recipes.pretrain import pretrain

OVERRIDES = ["train.steps=2", "train.prompts_per_step=4", "train.group_size=2", "train.lr=0.01",
             "train.probe_prompts=2", "train.probe_samples=3", "task.max_new_tokens=8"]


def _worker(init: str, out: str, objective: str, record: str) -> None:
    """Runs in each forked process: train two steps, then save this process's final weights."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # the fork inherits the parent's singleton
    import mitigate.recipes.train as T
    from mitigate.objectives.teacher import Teacher

    final: dict = {}
    original = Teacher.after_step

    def after_step(self):  # every process, after every optimizer step
        original(self)
        final["weights"] = {k: v.detach().cpu().clone().contiguous() for k, v in self.policy.model.state_dict().items()}
        final["steps"] = final.get("steps", 0) + 1

    Teacher.after_step = after_step
    generate, seen = T.generate, []

    def recording_generate(policy, task, prompts, n, *a, **k):
        if n == 2:  # the loop's rollouts (group_size 2; the probe, main process only, samples 3)
            seen.extend(q.id for q in prompts)
        return generate(policy, task, prompts, n, *a, **k)

    T.generate = recording_generate
    # The random tiny model answers nothing correctly, and with no reward and no demonstration the
    # exact gradient at the base is 0 (the student is its own teacher and its reference). Accept
    # every other rollout so that both objectives have a real gradient for DDP to average.
    from mitigate.tasks.sciqa import SciQATask

    def half_correct(self, prompts, completions):
        correct = np.arange(len(prompts)) % 2 == 0
        return correct, np.where(correct, 0, -1)

    SciQATask.verify = half_correct
    cfg = C.load(preset="sciqa-smoke", overrides=[*OVERRIDES, f"train.objective={{name: {objective}}}"])
    T.train(cfg, init, out, quiet=True)
    state = PartialState()
    save_file(final["weights"], f"{record}/rank{state.process_index}.safetensors")
    with open(f"{record}/rank{state.process_index}.json", "w") as f:
        json.dump({"world": state.num_processes, "steps": final["steps"], "prompts": sorted(set(seen)),
                   "distributed": str(state.distributed_type)}, f)


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """The sciqa-smoke base as given (no warm-up): `pretrain.steps=0`."""
    return pretrain(C.load(preset="sciqa-smoke", overrides=[*OVERRIDES, "pretrain.steps=0"]),
                    tmp_path_factory.mktemp("hf") / "base", quiet=True)


@pytest.mark.parametrize("objective", ["sdsd", pytest.param("grpo", marks=pytest.mark.slow)])
def test_two_process_hf_training_stays_in_sync(hf_base, tmp_path, objective):
    from accelerate import debug_launcher

    record = tmp_path / "record"
    record.mkdir()
    out = tmp_path / "run"
    debug_launcher(_worker, args=(str(hf_base / "checkpoint"), str(out), objective, str(record)), num_processes=2)
    infos = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in infos:
        assert info["world"] == 2 and info["steps"] == 2 and "MULTI_CPU" in info["distributed"]
    assert infos[0]["prompts"] and infos[1]["prompts"] and infos[0]["prompts"] != infos[1]["prompts"]
    w0, w1 = (load_file(record / f"rank{r}.safetensors") for r in (0, 1))
    assert set(w0) == set(w1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"processes disagree on {k}"
    saved = load_file(out / "checkpoint" / "model.safetensors")  # written by the main process only
    base = load_file(hf_base / "checkpoint" / "model.safetensors")
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    assert any(not torch.equal(saved[k], base[k]) for k in base), "training must move the weights"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
