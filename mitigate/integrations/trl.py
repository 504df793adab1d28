"""Collapse measurement inside TRL (or any `transformers.Trainer`): a monitor callback and group
rewards, in the conventions those trainers already use.

    from mitigate.integrations.trl import CollapseMonitor
    trainer = GRPOTrainer(model=..., reward_funcs=..., args=..., train_dataset=...)
    CollapseMonitor(task, every=10).attach(trainer)
    trainer.train()

`CollapseMonitor` samples a fixed probe set (the task's ID split by default, its first
`max_prompts` prompts) with the trainer's model every `every` optimizer steps, scores the samples
with the task's verifier and logs `collapse/pass@1`, `collapse/pass@<n>`, the diversity among
correct samples the task offers and the token entropy through the trainer's own `log`, so they
reach `state.log_history` and every `report_to` integration. Each measurement draws from a fresh
`torch_stream(seed, "eval")`, the stream `mitigate eval --seed SEED` samples with, so a logged value
equals `mitigate eval` of the same weights on the same prompts with the same n. Sampling runs on the
main process with the unwrapped model under no-grad (no collective call, so no deadlock with
several processes); every process then meets at one barrier. It warns once when diversity has
fallen by `warn_drop` (relative to the first measurement) while pass@1 rose.

`UnlikelinessReward` is the package's unlikeliness reward (`objectives.grpo_unlikely`) as a TRL
reward function: the same per-sample rewards on the same groups as the package's own loop.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from mitigate import config as C
from mitigate.core.seeding import torch_stream
from mitigate.objectives.grpo_unlikely import unlikeliness_rewards
from mitigate.policies.hf import HFConfig, HFPolicy, end_of_sequence_ids
from mitigate.recipes.evaluate import prompt_rows, split_prompts, text_diversity

PREFIX = "collapse/"
DIVERSITY = ("concepts_at_r", "concepts", "semantic_clusters", "lexical_clusters", "vendi")


def hf_policy(model, tokenizer, eos_tokens=()):
    """The package's policy view of a trainer's (unwrapped) model and tokenizer."""
    cfg = C.build(HFConfig, {"name": "hf", "path": "", "eos_tokens": list(eos_tokens)}, "model")
    return HFPolicy(model, tokenizer, cfg, end_of_sequence_ids(tokenizer, model, cfg.eos_tokens))


class CollapseMonitor(TrainerCallback):
    """See the module docstring. `task`: a task of this package (e.g. `mitigate.tasks.make_task(
    mitigate.load_config(preset="sciqa").task)`) whose tokenizer is the trainer's; `split`: the
    probe split (default: the task's validation split); `samples`: n per prompt (pass@n is logged);
    `eval_cfg`: the evaluation settings for diversity (embedder, r); default the package's."""

    def __init__(self, task, every: int = 10, samples: int = 8, max_prompts: int = 16, split: str | None = None,
                 temperature: float = 1.0, seed: int = 0, warn_drop: float = 0.2, batch_size: int = 256,
                 eos_tokens=(), eval_cfg=None):
        if every < 1 or samples < 1 or max_prompts < 0:
            raise ValueError(f"CollapseMonitor: every ({every}) and samples ({samples}) must be >= 1, max_prompts "
                             f"({max_prompts}) >= 0")
        self.task, self.every, self.samples, self.temperature, self.seed = task, every, samples, temperature, seed
        self.warn_drop, self.batch_size, self.eos_tokens = warn_drop, batch_size, tuple(eos_tokens)
        self.split = split or task.val_split
        self.prompts = split_prompts(task, self.split, max_prompts)
        self.eval_cfg = eval_cfg if eval_cfg is not None else C.build(C.EvalConfig, {"embedder": "tfidf"})
        self.diversity = text_diversity(task, self.eval_cfg)
        self.trainer, self.first, self.warned = None, None, False
        self.history: list[dict] = []

    def attach(self, trainer) -> CollapseMonitor:
        """Add the monitor to `trainer` (it logs through the trainer, so it keeps a reference)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @torch.no_grad()
    def measure(self, model, tokenizer) -> dict[str, float]:
        """Means over the probe prompts, keys prefixed `collapse/`."""
        policy = hf_policy(model, tokenizer, self.eos_tokens)
        rows = prompt_rows(policy, self.task, self.prompts, self.samples, self.temperature,
                           torch_stream(self.seed, "eval"), self.batch_size, diversity=self.diversity,
                           r=self.eval_cfg.diversity_r if self.samples >= self.eval_cfg.diversity_r else 0)
        out = {f"{PREFIX}pass@1": float(np.mean([r["pass_at_k"]["1"] for r in rows])),
               f"{PREFIX}pass@{self.samples}": float(np.mean([r["pass_at_k"][str(self.samples)] for r in rows])),
               f"{PREFIX}token_entropy": float(np.mean([r["token_entropy"] for r in rows]))}
        for key in DIVERSITY:
            values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
            if values:
                out[f"{PREFIX}{key}"] = float(np.mean(values))
        return out

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every:
            return
        if self.trainer is None:
            raise RuntimeError("CollapseMonitor logs through its trainer: add it with monitor.attach(trainer), "
                               "not trainer.add_callback(monitor)")
        accelerator = self.trainer.accelerator
        if accelerator.is_main_process:
            module = accelerator.unwrap_model(model if model is not None else self.trainer.model)
            training = module.training
            module.eval()
            try:
                metrics = self.measure(module, processing_class or self.trainer.processing_class)
            finally:
                module.train(training)
            self.history.append({"step": state.global_step, **metrics})
            Trainer.log(self.trainer, dict(metrics))  # the base log: a subclass's log may flush its own metrics
            self._maybe_warn(metrics, state.global_step)
        accelerator.wait_for_everyone()

    def _maybe_warn(self, metrics: dict, step: int) -> None:
        key = next((f"{PREFIX}{k}" for k in DIVERSITY if f"{PREFIX}{k}" in metrics), None)
        if key is None:
            return
        if self.first is None:
            self.first = metrics
            return
        before, now = self.first[key], metrics[key]
        rose = metrics[f"{PREFIX}pass@1"] > self.first[f"{PREFIX}pass@1"]
        if not self.warned and rose and before > 0 and (before - now) / before >= self.warn_drop:
            self.warned = True
            warnings.warn(f"CollapseMonitor: at step {step} {key} fell {(before - now) / before:.0%} "
                          f"({before:.3g} -> {now:.3g}) while pass@1 rose: the policy is narrowing", stacklevel=2)


class UnlikelinessReward:
    """A TRL reward function: the package's unlikeliness reward (`grpo_unlikely`). `correct(prompts,
    completions, **kwargs) -> list[bool]` is the verifier; `seq_logprob(prompts, completion_ids) ->
    list[float]` the current policy's sequence log-probs (e.g. from the trainer's model). TRL hands a
    batch of `num_generations` consecutive completions per prompt: those are the groups."""

    def __init__(self, correct, seq_logprob, num_generations: int, beta: float = 0.25):
        self.correct, self.seq_logprob, self.G, self.beta = correct, seq_logprob, num_generations, beta
        self.__name__ = "unlikeliness"  # TRL names a reward function's logged column after it

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        if len(completions) % self.G:
            raise ValueError(f"UnlikelinessReward: {len(completions)} completions are not whole groups of "
                             f"{self.G} (num_generations)")
        correct = torch.as_tensor(list(self.correct(prompts, completions, **kwargs)), dtype=torch.bool)
        seq = torch.as_tensor(list(self.seq_logprob(prompts, completion_ids)), dtype=torch.float64)
        groups = torch.arange(len(completions)) // self.G
        return unlikeliness_rewards(seq, correct, groups, self.beta).tolist()
