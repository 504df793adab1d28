"""`mitigate.integrations.trl`: the collapse monitor inside TRL's GRPOTrainer (a tiny random HF
causal LM, a few CPU steps) logs at the right steps values equal to `mitigate eval` of the same
weights, and the unlikeliness reward gives the package loop's per-sample rewards."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")  # the bench extra; `make test` installs it

from mitigate import config as C  # noqa: E402
from mitigate.integrations.trl import PREFIX, CollapseMonitor, UnlikelinessReward, hf_policy  # noqa: E402
from mitigate.objectives.grpo_unlikely import unlikeliness_rewards  # noqa: E402
from mitigate.recipes.evaluate import evaluate  # noqa: E402
from mitigate.tasks import make_task  # noqa: E402


@pytest.fixture(scope="module")
def sciqa():
    cfg = C.load(preset="sciqa-smoke")
    return cfg, make_task(cfg.task)


def test_monitor_logs_through_grpo_trainer_and_equals_mitigate_eval(sciqa, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from mitigate.policies.hf import HFConfig, HFPolicy, load_tokenizer, tiny_folder

    cfg, task = sciqa
    folder = tiny_folder("tiny:qwen3")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = load_tokenizer(folder)
    data = Dataset.from_dict({"prompt": ["Which planet is largest?", "What gas do plants take in?"] * 4})
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, max_steps=4, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, learning_rate=1e-2, logging_steps=1,
                      save_strategy="no", report_to="none", disable_tqdm=True, beta=0.0, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [float(len(c)) for c in completions]],
                          args=args, train_dataset=data, processing_class=tokenizer)
    monitor = CollapseMonitor(task, every=2, samples=4, max_prompts=5, split=task.test_split, seed=3).attach(trainer)
    trainer.train()
    logged = [r for r in trainer.state.log_history if f"{PREFIX}pass@1" in r]
    assert [r["step"] for r in logged] == [2, 4]  # every 2 steps, at the step the weights are from
    assert {f"{PREFIX}pass@4", f"{PREFIX}token_entropy"} <= set(logged[-1])
    assert any("loss" in r for r in trainer.state.log_history)  # TRL's own logging untouched
    # an independent evaluation of the final weights, as `mitigate eval --seed 3` computes it
    trainer.save_model(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    policy = HFPolicy.from_folder(tmp_path / "final", C.build(HFConfig, {"name": "hf", "path": ""}, "model"))
    eval_cfg = C.build(C.EvalConfig, {"samples": 4, "max_prompts": 5, "embedder": "tfidf"})
    independent = evaluate(policy, task, eval_cfg, seed=3, quiet=True)["id"]
    assert logged[-1][f"{PREFIX}pass@1"] == pytest.approx(independent["pass_at_k"]["1"], abs=1e-12)
    assert logged[-1][f"{PREFIX}pass@4"] == pytest.approx(independent["pass_at_k"]["4"], abs=1e-12)
    assert logged[-1][f"{PREFIX}token_entropy"] == pytest.approx(independent["token_entropy"], rel=1e-6)
    assert monitor.history[-1]["step"] == 4


def test_monitor_must_be_attached(sciqa):
    cfg, task = sciqa
    monitor = CollapseMonitor(task, every=1)

    class State:
        global_step = 1

    with pytest.raises(RuntimeError, match="attach"):
        monitor.on_step_end(None, State(), None)


def test_unlikeliness_reward_through_trl_equals_the_package_loop():
    G = 4
    prompts = ["p"] * G + ["q"] * G
    completions = [f"c{i}" for i in range(2 * G)]
    correct = [True, True, False, True, False, True, True, False]
    logp = [-1.0, -3.0, -0.5, -2.0, -4.0, -1.0, -1.0, -9.0]
    reward = UnlikelinessReward(lambda p, c, **kw: correct, lambda p, ids: logp, num_generations=G, beta=0.3)
    got = reward(prompts, completions, completion_ids=[[0]] * (2 * G))
    want = unlikeliness_rewards(torch.tensor(logp, dtype=torch.float64), torch.tensor(correct),
                                torch.arange(2 * G) // G, 0.3).tolist()
    assert got == want
    assert got[2] == 0.0 and got[0] < got[1]  # incorrect gets 0; the likelier correct gets less
    with pytest.raises(ValueError, match="whole groups"):
        reward(prompts[:5], completions[:5])


def test_hf_policy_view_samples_like_the_package_policy(sciqa):
    from mitigate.policies.hf import HFConfig, HFPolicy, tiny_folder

    cfg, task = sciqa
    loaded = HFPolicy.from_folder(tiny_folder("tiny:qwen3"), C.build(HFConfig, {"name": "hf", "path": ""}, "model"))
    view = hf_policy(loaded.model, loaded.tokenizer)
    assert view.eos_ids == loaded.eos_ids and view.pad_id == loaded.pad_id
