"""Two CPU processes (gloo) through `accelerate.debug_launcher`: prompts are sharded, gradients
averaged, and both processes end with the same weights, which moved away from the base model.

The debug launcher uses a fixed rendezvous: never run two multi-process tests at once."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file


def _state(model) -> dict:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _worker(init: str, out: str, overrides: list, record: str) -> None:
    """Runs in each forked process: train two steps, then save this process's final weights."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # the fork inherits the parent's singleton
    import mitigate.recipes.train as T
    from mitigate import config as C
    from mitigate.objectives.teacher import Teacher

    final: dict = {}
    original = Teacher.after_step

    def after_step(self):  # called on every process after every optimizer step
        original(self)
        final["weights"] = _state(self.policy.model)
        final["steps"] = final.get("steps", 0) + 1

    Teacher.after_step = after_step
    generate, probe, seen, probing = T.generate, T.probe, [], []

    def recording_generate(policy, task, prompts, n, *a, **k):  # the loop's rollouts: this process's prompt shard
        if not probing:  # the periodic probe (main process only) samples validation prompts
            seen.extend(tuple(q.tokens) for q in prompts for _ in range(n))
        return generate(policy, task, prompts, n, *a, **k)

    def flagged_probe(*a, **k):
        probing.append(True)
        try:
            return probe(*a, **k)
        finally:
            probing.pop()

    T.generate, T.probe = recording_generate, flagged_probe
    cfg = C.load(preset="smoke", overrides=[*overrides, "train.lr=3e-3", "train.prompts_per_step=4",
                                            "train.steps=2"])
    T.train(cfg, init, out, quiet=True)
    state = PartialState()
    save_file(final["weights"], f"{record}/rank{state.process_index}.safetensors")
    with open(f"{record}/rank{state.process_index}.json", "w") as f:
        json.dump({"world": state.num_processes, "steps": final["steps"], "contexts": sorted(set(seen)),
                   "distributed": str(state.distributed_type)}, f)


# ot with replay runs a second student forward (the reference paths) before the one backward:
# the case where DDP's gradient hooks could see a parameter twice or miss a reduction.
SETUPS = {
    "grpo": ["train.objective.name=grpo"],
    "sdsd": ["train.objective.name=sdsd"],
    "sdsd_ot_replay": ["train.objective.name=sdsd", "train.regularizers=[{name: ot, coef: 1.0, replay: 1.0}]"],
}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_two_process_training_stays_in_sync(smoke_base, tmp_path, setup):
    from accelerate import debug_launcher

    record = tmp_path / "record"
    record.mkdir()
    out = tmp_path / "run"
    debug_launcher(_worker, args=(str(smoke_base / "checkpoint"), str(out), SETUPS[setup], str(record)),
                   num_processes=2)
    infos = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    for info in infos:
        assert info["world"] == 2 and info["steps"] == 2
        assert "MULTI_CPU" in info["distributed"]
    shards = [{tuple(c) for c in info["contexts"]} for info in infos]
    assert shards[0] and shards[1] and shards[0] != shards[1], "each process trains on its own prompts"
    w0, w1 = (load_file(record / f"rank{r}.safetensors") for r in (0, 1))
    base = load_file(smoke_base / "checkpoint" / "model.safetensors")
    saved = load_file(out / "checkpoint" / "model.safetensors")  # written by the main process only
    assert set(w0) == set(w1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"processes disagree on {k}"
    for k in saved:
        assert torch.equal(saved[k], w0[k]), k
    assert any(not torch.equal(w0[k], base[k]) for k in base), "training must move the weights"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
