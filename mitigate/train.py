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
from mitigate import registry
from mitigate.batch import Batch
from mitigate.evaluate import sample_prompts
from mitigate.metrics import pass_at_k
from mitigate.objectives.functional import k3_kl, masked_mean, token_divergence
from mitigate.policy import (
    clone_frozen,
    continuation_logprobs,
    gather_tokens,
    load_checkpoint,
    n_params,
    sample,
    save_checkpoint,
)
from mitigate.pretrain import checkpoint_meta
from mitigate.runs import MetricsLog, run_folder, write_meta
from mitigate.tasks import make_task


class Teacher:
    """Teacher log-probs under no-grad with dropout off; weights `live`, `ema` or `base`."""

    def __init__(self, kind: str, student, base, ema_decay: float = 0.99):
        self.kind, self.student, self.decay = kind, student, ema_decay
        self.model = {"live": None, "base": base, "ema": clone_frozen(student) if kind == "ema" else None}[kind]

    @torch.no_grad()
    def logprobs(self, contexts, tokens, mask) -> torch.Tensor:
        model = self.model if self.model is not None else self.student
        was = model.training
        model.eval()
        out = continuation_logprobs(model, contexts, tokens, mask)
        model.train(was)
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        if self.kind == "ema":
            for t, s in zip(self.model.parameters(), self.student.parameters()):
                t.lerp_(s, 1 - self.decay)


def _prompt_order(n: int, steps: int, per_step: int, seed: int) -> np.ndarray:
    """Prompt indices per step: shuffled passes over the pool, identical on every process."""
    rng = np.random.default_rng([seed, 7])
    need = steps * per_step
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])
    return order[:need].reshape(steps, per_step)


def probe(model, task, cfg, generator) -> dict:
    """pass@1 and distinct concepts on the first `probe_prompts` ID validation pairs."""
    prompts = task.prompts("id_val")[: cfg.train.probe_prompts]
    n = cfg.train.probe_samples
    _, correct, concepts, ent = sample_prompts(model, task, prompts, n, cfg.eval.temperature, generator,
                                               cfg.eval.batch_size, quiet=True)
    c = correct.reshape(len(prompts), n)
    conc = concepts.reshape(len(prompts), n)
    return {"probe_pass_at_1": float(np.mean([pass_at_k(n, int(x), 1) for x in c.sum(1)])),
            "probe_concepts": float(np.mean([len(set(conc[i][c[i]])) for i in range(len(prompts))])),
            "probe_token_entropy": float(ent.mean())}


def train(cfg: C.Config, init: str | Path, out: str | Path, overwrite: bool = False, quiet: bool = False,
          method: str | None = None) -> Path:
    accelerator = Accelerator(cpu=cfg.device == "cpu")
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.seed)
    tc = cfg.train
    task = make_task(cfg.task)
    objective = registry.get("objective", tc.objective.name)
    regularizers = [(registry.get("regularizer", r.name), r) for r in tc.regularizers]
    model, meta = load_checkpoint(init, accelerator.device)
    if meta.get("task") != C.to_dict(cfg.task):
        raise C.ConfigError(f"task parameters differ from those the checkpoint '{init}' was pretrained on; "
                            "train on the same task (drop task.* overrides)")
    if tc.prompts_per_step % world:
        raise C.ConfigError(f"train.prompts_per_step ({tc.prompts_per_step}) must divide by the number of "
                            f"processes ({world})")
    model.train()
    base = clone_frozen(model)
    teacher = Teacher(getattr(tc.objective, "teacher", "live"), model, base, getattr(tc.objective, "ema_decay", 0.99))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    model, opt = accelerator.prepare(model, opt)
    student = accelerator.unwrap_model(model)
    teacher.student = student

    pool = task.prompts("id_train")
    order = _prompt_order(len(pool), tc.steps, tc.prompts_per_step, cfg.seed)
    sample_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    demo_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + rank)
    probe_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 900)
    method = method or tc.objective.name
    G = tc.group_size
    ref_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 700 + rank)
    run_state: dict = {}

    def score_fn(contexts, tokens, mask):  # the student on other continuations, with grad
        dev = accelerator.device
        return continuation_logprobs(model, contexts, tokens.to(dev), mask.float().to(dev))

    def ref_sample_fn(prompts, n):
        out = sample_prompts(base, task, prompts, n, tc.temperature, ref_gen, cfg.eval.batch_size, quiet=True)
        return out[0], out[1], out[2]

    ctx = run_folder(out, overwrite) if accelerator.is_main_process else _NullFolder(out)
    with ctx as tmp:
        if accelerator.is_main_process:
            write_meta(tmp, C.dump(cfg), cfg.seed, f"train {method} from {init}")
            log = MetricsLog(tmp / "metrics.jsonl")
            log.log({"step": 0, **probe(student, task, cfg, probe_gen)})
        t0 = time.time()
        bar = tqdm(range(1, tc.steps + 1), desc=f"train {method}", unit="step",
                   disable=quiet or not accelerator.is_main_process)
        for step in bar:
            idx = order[step - 1].reshape(world, -1)[rank]
            prompts = [pool[i] for i in idx]
            contexts = [q.tokens for q in prompts for _ in range(G)]
            s = sample(student, contexts, task.max_new_tokens, tc.temperature, sample_gen, cfg.eval.batch_size)
            rep = [q for q in prompts for _ in range(G)]
            correct_np, concepts_np = task.verify(rep, s.tokens.numpy())
            dev = accelerator.device
            tokens, mask = s.tokens.to(dev), s.mask.float().to(dev)
            correct = torch.as_tensor(correct_np, device=dev)
            group_index = torch.arange(len(prompts), device=dev).repeat_interleave(G)
            with torch.no_grad():
                old = continuation_logprobs(student, contexts, tokens, mask).gather(-1, tokens[..., None])[..., 0]
            ref_cache: dict = {}

            def ref_fn(contexts=contexts, tokens=tokens, mask=mask, cache=ref_cache):
                if "ref" not in cache:
                    with torch.no_grad():
                        cache["ref"] = continuation_logprobs(base, contexts, tokens, mask)
                return cache["ref"]

            batch_cache: dict = {}
            for _ in range(tc.inner_epochs):
                logprobs = continuation_logprobs(model, contexts, tokens, mask)
                batch = Batch(task=task, prompts=prompts, group_index=group_index, contexts=contexts,
                              tokens=tokens, mask=mask, rewards=correct.float(), correct=correct,
                              concepts=torch.as_tensor(concepts_np, device=dev), logprobs=logprobs,
                              old_token_logprobs=old,
                              teacher_fn=lambda c, t=tokens, m=mask: teacher.logprobs(c, t, m),
                              ref_fn=ref_fn, generator=demo_gen, ref_sample_fn=ref_sample_fn,
                              score_fn=score_fn,
                              cache=batch_cache, state=run_state)
                loss, scalars = objective.fn(batch, tc.objective)
                if tc.kl_coef > 0:  # the shared KL anchor (k3 on sampled tokens)
                    k3 = masked_mean(k3_kl(batch.token_logprobs(), gather_tokens(ref_fn(), tokens)), mask)
                    loss = loss + tc.kl_coef * k3
                    scalars["kl_base_k3"] = float(k3.detach())
                for entry, rcfg in regularizers:
                    r_loss, r_scalars = entry.fn(batch, rcfg)
                    loss = loss + rcfg.coef * r_loss
                    scalars.update({f"{rcfg.name}/{k}": v for k, v in r_scalars.items()})
                    scalars[f"{rcfg.name}/loss"] = float(r_loss.detach())
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if tc.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
            teacher.after_step()
            if accelerator.is_main_process:
                kl_base = masked_mean(token_divergence(logprobs.detach(), ref_fn(), "reverse_kl"), mask)
                conc = concepts_np.reshape(len(prompts), G)
                row = {"step": step, "loss": float(loss.detach()), "reward": float(correct.float().mean()),
                       "kl_base": float(kl_base), "token_entropy": float(s.token_entropy.mean()),
                       "batch_concepts": float(np.mean([len(set(r[r >= 0])) for r in conc])),
                       "seconds": round(time.time() - t0, 2), **scalars}
                if step % tc.eval_every == 0 or step == tc.steps:
                    row.update(probe(student, task, cfg, probe_gen))
                log.log(row)
                bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_base']:.3f}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(student, tmp / "checkpoint", checkpoint_meta(cfg, method, n_params(student)))
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
