"""Pretraining recipe: next-token prediction on the task's pretraining sequences -> base model."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mitigate import config as C
from mitigate.core.io import MetricsLog, run_folder, write_meta
from mitigate.core.seeding import device_for, seed_everything, torch_stream
from mitigate.policies import build_policy
from mitigate.recipes.common import checkpoint_record
from mitigate.tasks import make_task


def pretrain(cfg: C.Config, out: str | Path, overwrite: bool = False, quiet: bool = False) -> Path:
    # ---- setup: task data, a fresh policy, optimizer
    seed_everything(cfg.seed)
    task = make_task(cfg.task)
    device = device_for(cfg.device)
    tokens, loss_mask = (torch.from_numpy(a) for a in task.pretraining_data())
    policy = build_policy(cfg.model, task)
    policy.model.to(device)
    pc = cfg.pretrain
    opt = torch.optim.AdamW(policy.model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(opt, pc.warmup_steps, pc.steps)
    gen = torch_stream(cfg.seed, "pretrain")
    with run_folder(out, overwrite) as tmp:
        write_meta(tmp, C.dump(cfg), cfg.seed, "pretrain")
        log = MetricsLog(tmp / "metrics.jsonl")
        policy.model.train()
        t0 = time.time()
        bar = tqdm(range(1, pc.steps + 1), desc="pretrain", unit="step", disable=quiet)
        # ---- loop: sample a batch of sequences, one optimizer step
        for step in bar:
            idx = torch.randint(len(tokens), (pc.batch_size,), generator=gen)
            loss = policy.pretraining_loss(tokens[idx].to(device), loss_mask[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % pc.log_every == 0 or step == pc.steps:
                row = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                       "seconds": round(time.time() - t0, 2)}
                log.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
        # ---- checkpoint
        policy.save(tmp / "checkpoint", checkpoint_record(cfg, "base", policy))
    return Path(out)
