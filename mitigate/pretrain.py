"""Pretraining recipe: next-token prediction on the task's pretraining sequences -> base model."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mitigate import config as C
from mitigate.policy import build_model, n_params, save_checkpoint
from mitigate.runs import MetricsLog, run_folder, write_meta
from mitigate.tasks import make_task
from mitigate.utils import device_for, seed_everything


def pretraining_loss(model, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over target tokens (the path and its EOS; never the prompt or demo)."""
    attn = (tokens != 0).long()
    logits = model(input_ids=tokens, attention_mask=attn).logits[:, :-1]
    target, m = tokens[:, 1:], loss_mask[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                            reduction="none").view_as(m)
    return (nll * m).sum() / m.sum()


def pretrain(cfg: C.Config, out: str | Path, overwrite: bool = False, quiet: bool = False) -> Path:
    seed_everything(cfg.seed)
    task = make_task(cfg.task)
    device = device_for(cfg.device)
    tokens, loss_mask = (torch.from_numpy(a) for a in task.pretraining_data())
    model = build_model(cfg.model, task.vocab_size).to(device)
    pc = cfg.pretrain
    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(opt, pc.warmup_steps, pc.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    with run_folder(out, overwrite) as tmp:
        write_meta(tmp, C.dump(cfg), cfg.seed, "pretrain")
        log = MetricsLog(tmp / "metrics.jsonl")
        model.train()
        t0 = time.time()
        bar = tqdm(range(1, pc.steps + 1), desc="pretrain", unit="step", disable=quiet)
        for step in bar:
            idx = torch.randint(len(tokens), (pc.batch_size,), generator=gen)
            loss = pretraining_loss(model, tokens[idx].to(device), loss_mask[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % pc.log_every == 0 or step == pc.steps:
                row = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                       "seconds": round(time.time() - t0, 2)}
                log.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
        save_checkpoint(model, tmp / "checkpoint", checkpoint_meta(cfg, "base", n_params(model)))
    return Path(out)


def checkpoint_meta(cfg: C.Config, method: str, params: int) -> dict:
    return {"method": method, "n_params": params, "task": C.to_dict(cfg.task), "config": C.to_dict(cfg)}
