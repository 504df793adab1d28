"""The on-policy recipe: sample G rollouts per prompt -> verify -> objective (+ regularizers) ->
optimizer step -> periodic probe -> checkpoint. Driven by `accelerate`: CPU by default, and the
same code under `accelerate launch` on several processes or GPUs (prompts are sharded across
processes, gradients averaged by DDP)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.budget import Budget, Metered, MeteredTask
from mitigate.core.io import MetricsLog, check_output, run_folder, write_json, write_meta
from mitigate.core.seeding import numpy_stream, torch_stream
from mitigate.metrics import pass_at_k
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives.base import make_term
from mitigate.ops import aggregate, gather_tokens, k3_kl, masked_mean, reverse_kl_anchor, token_divergence
from mitigate.policies import load_policy, resolve_checkpoint
from mitigate.recipes.common import checkpoint_record, same_task
from mitigate.regularizers import REGULARIZERS
from mitigate.rollout import generate
from mitigate.tasks import make_task


def prompt_order(n: int, steps: int, per_step: int, seed: int) -> np.ndarray:
    """Prompt indices per step: shuffled passes over the pool, identical on every process."""
    rng = numpy_stream(seed, "prompt_order")
    need = steps * per_step
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])
    return order[:need].reshape(steps, per_step)


def probe(policy, task, cfg: C.Config, generator: torch.Generator) -> dict:
    """pass@1 and distinct labels on the first `probe_prompts` validation prompts."""
    prompts = task.prompts(task.val_split)[: cfg.train.probe_prompts]
    n = cfg.train.probe_samples
    r = generate(policy, task, prompts, n, cfg.eval.temperature, generator, cfg.eval.batch_size)
    c = r.correct.reshape(len(prompts), n)
    labels = r.labels.reshape(len(prompts), n)
    return {"probe_pass_at_1": float(np.mean([pass_at_k(n, int(x), 1) for x in c.sum(1)])),
            "probe_concepts": float(np.mean([len(set(labels[i][c[i]])) for i in range(len(prompts))])),
            "probe_token_entropy": float(r.token_entropy.numpy().mean())}


def train(cfg: C.Config, init: str | Path, out: str | Path, overwrite: bool = False, quiet: bool = False,
          method: str | None = None) -> Path:
    # ---- setup: processes, task, policy, frozen reference, teacher, optimizer, random streams
    accelerator = Accelerator(cpu=cfg.device == "cpu")
    rank, world = accelerator.process_index, accelerator.num_processes
    tc = cfg.train
    if accelerator.is_main_process:
        check_output(out, overwrite, inputs=[init])
    if tc.prompts_per_step % world:
        raise C.ConfigError(f"train.prompts_per_step ({tc.prompts_per_step}) must divide by the number of "
                            f"processes ({world})")
    set_seed(cfg.seed)
    task = make_task(cfg.task)
    objective = make_term(OBJECTIVES.get(tc.objective.name, "train.objective.name"))
    regularizers = [(make_term(REGULARIZERS.get(r.name, "train.regularizers")), r) for r in tc.regularizers]
    policy, meta = load_policy(resolve_checkpoint(init), accelerator.device)
    if not same_task(meta.get("task"), cfg):
        raise C.ConfigError(f"task parameters differ from those the checkpoint '{init}' was pretrained on; "
                            "train on the same task (drop task.* overrides)")
    policy.model.train()
    # every sample, score and verifier call below is counted into the run's budget
    budget = Budget()
    reference = Metered(policy.frozen_copy(), budget, "reference_generations")
    student, train_task = Metered(policy, budget, "rollouts"), MeteredTask(task, budget)
    objective_cfg = tc.objective
    teacher = Teacher(getattr(objective_cfg, "teacher", "live"), student, reference,
                      getattr(objective_cfg, "ema_decay", 0.99))
    opt = torch.optim.AdamW(policy.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    policy.wrapped, opt = accelerator.prepare(policy.model, opt)
    ctx = Context(task=train_task, policy=student, reference=reference, teacher=teacher,
                  generator=torch_stream(cfg.seed, "objective", rank),
                  reference_generator=torch_stream(cfg.seed, "reference", rank),
                  temperature=tc.temperature, batch_size=cfg.eval.batch_size)
    rollout_gen = torch_stream(cfg.seed, "rollouts", rank)
    probe_gen = torch_stream(cfg.seed, "probe")
    pool = task.prompts(task.train_split)
    order = prompt_order(len(pool), tc.steps, tc.prompts_per_step, cfg.seed)
    method = method or tc.objective.name
    G, dev = tc.group_size, accelerator.device

    folder = run_folder(out, overwrite, inputs=[init]) if accelerator.is_main_process else _NullFolder(out)
    with folder as tmp:
        if accelerator.is_main_process:
            write_meta(tmp, C.dump(cfg), cfg.seed, f"train {method} from {init}")
            log = MetricsLog(tmp / "metrics.jsonl")
            log.log({"step": 0, **probe(policy, task, cfg, probe_gen)})
        t0 = time.time()
        bar = tqdm(range(1, tc.steps + 1), desc=f"train {method}", unit="step",
                   disable=quiet or not accelerator.is_main_process)
        for step in bar:
            ctx.step = step
            # ---- rollouts: this process's share of the step's prompts, G samples each, verified
            idx = order[step - 1].reshape(world, -1)[rank]
            prompts = [pool[i] for i in idx]
            r = generate(student, train_task, prompts, G, tc.temperature, rollout_gen, cfg.eval.batch_size)
            tokens, mask = r.tokens.to(dev), r.mask.float().to(dev)
            correct = torch.as_tensor(r.correct, device=dev)
            # ---- scores fixed for the step: the sampling policy's and the reference's log-probs
            with torch.no_grad():
                old = gather_tokens(student.logprobs(r.contexts, tokens, mask), tokens)
                ref = reference.logprobs(r.contexts, tokens, mask)
            # ---- objective + KL anchor + regularizers, `inner_epochs` optimizer passes
            for _ in range(tc.inner_epochs):
                batch = Batch(prompts=prompts, group_index=r.group_index.to(dev), contexts=r.contexts,
                              tokens=tokens, mask=mask, rewards=correct.float(), correct=correct,
                              labels=torch.as_tensor(r.labels, device=dev),
                              logprobs=student.logprobs(r.contexts, tokens, mask), old_token_logprobs=old,
                              ref_logprobs=ref)
                loss, scalars = objective(batch, ctx, tc.objective)
                if tc.kl_coef > 0:  # the shared KL anchor to the frozen base, same for every objective
                    if tc.kl_estimator == "k3":
                        anchor = k3_kl(batch.token_logprobs(), gather_tokens(ref, tokens))
                    else:
                        anchor, _ = reverse_kl_anchor(batch.logprobs, ref, tokens, mask)
                    anchor = aggregate(anchor, mask, "token_mean")
                    loss = loss + tc.kl_coef * anchor
                    scalars["kl_anchor_loss"] = float(anchor.detach())
                for term, rcfg in regularizers:
                    r_loss, r_scalars = term(batch, ctx, rcfg)
                    loss = loss + rcfg.coef * r_loss
                    scalars.update({f"{rcfg.name}/{k}": v for k, v in r_scalars.items()})
                    scalars[f"{rcfg.name}/loss"] = float(r_loss.detach())
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if tc.grad_clip > 0:
                    accelerator.clip_grad_norm_(policy.model.parameters(), tc.grad_clip)
                opt.step()
            teacher.after_step()
            # ---- log (main process): batch statistics, and the probe every `eval_every` steps
            if accelerator.is_main_process:
                kl_base = masked_mean(token_divergence(batch.logprobs.detach(), ref, "reverse_kl"), mask)
                labels = r.labels.reshape(len(prompts), G)
                row = {"step": step, "loss": float(loss.detach()), "reward": float(correct.float().mean()),
                       "kl_base": float(kl_base), "token_entropy": float(r.token_entropy.mean()),
                       "batch_concepts": float(np.mean([len(set(x[x >= 0])) for x in labels])),
                       "seconds": round(time.time() - t0, 2), **scalars}
                if step % tc.eval_every == 0 or step == tc.steps:
                    row.update(probe(policy, task, cfg, probe_gen))
                log.log(row)
                bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_base']:.3f}")
        # ---- checkpoint and budget (this process's share; the probe is evaluation, not counted)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            budget.wall_seconds = round(time.time() - t0, 2)
            write_json(tmp / "budget.json", {**budget.to_dict(), "processes": world})
            policy.save(tmp / "checkpoint", checkpoint_record(cfg, method, policy))
    accelerator.wait_for_everyone()
    return Path(out)


class _NullFolder:
    """Non-main processes write nothing."""

    def __init__(self, out):
        self.out = Path(out)

    def __enter__(self):
        return self.out

    def __exit__(self, *exc):
        return False
