"""Pretraining recipe: next-token prediction on the task's pretraining sequences -> base model.

`pretrain.steps: 0` saves the model as given, without asking the task for data: an `hf` checkpoint
(which starts from trained weights) becomes the run's base checkpoint unchanged; a graph model
would be its fresh initialisation. With steps > 0 the same loop trains any policy that offers
`pretraining_loss` (the graph task's pretraining; an `hf` model's supervised warm-up on the task's
`pretraining_data`).

The run works in `OUT.partial` with a resume checkpoint every `pretrain.save_every` steps (see
`mitigate.recipes.train` and `mitigate.core.resume`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mitigate import config as C
from mitigate.core import resume as checkpointing
from mitigate.core.guard import NonFiniteError, check_weights, nonfinite, nonfinite_message
from mitigate.core.io import MetricsLog, plan_run, resumable_run, versions, write_meta
from mitigate.core.seeding import device_for, seed_everything, torch_stream
from mitigate.core.tracking import Trackers, parse_report_to
from mitigate.policies import build_policy
from mitigate.recipes.common import checkpoint_record, finished_run, note_resume, run_record
from mitigate.tasks import make_task


def pretrain(cfg: C.Config, out: str | Path, overwrite: bool = False, quiet: bool = False,
             resume: bool = False, report_to: str = "none") -> Path:
    """Pretrain a fresh policy into the run folder `out`. `resume`: continue the unfinished run in
    `OUT.partial` from its last checkpoint (`pretrain.save_every`); a finished `out` with this config
    is returned as it is. A non-finite loss or gradient stops the run (`pretrain.on_nonfinite`).
    `report_to`: experiment trackers the metrics rows also go to (`mitigate.core.tracking`)."""
    # ---- setup: task data, a fresh policy, optimizer
    device = device_for(cfg.device)
    plan = plan_run(out, overwrite, resume=resume)
    if plan.status == "complete":
        return finished_run(plan.out, cfg, quiet)
    seed_everything(cfg.seed)
    task = make_task(cfg.task)
    pc = cfg.pretrain
    if pc.steps:  # before the policy: the graph model's initialisation follows the task data's draws
        tokens, loss_mask = (torch.from_numpy(a) for a in task.pretraining_data())
    policy = build_policy(cfg.model, task)
    policy.model.to(device)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay, betas=(0.9, 0.98))
    sched = get_cosine_schedule_with_warmup(opt, pc.warmup_steps, pc.steps)
    gen = torch_stream(cfg.seed, "pretrain")
    streams, modules = {"pretrain": gen}, {"model": policy.model}
    identity = {"kind": "pretrain", "config": C.to_dict(cfg), "versions": versions()}
    parse_report_to(report_to)  # an unknown or uninstalled tracker is refused before any work
    with resumable_run(plan) as tmp, Trackers(report_to, tmp, "pretrain", C.to_dict(cfg)) as trackers:
        ckpts = checkpointing.Checkpoints(tmp)
        log = MetricsLog(tmp / "metrics.jsonl", mirror=trackers.log)
        latest = ckpts.latest() if resume else None
        start, elapsed = 0, 0.0
        if latest is not None:  # ---- resume: check the run is this one, then restore every piece of state
            restored = ckpts.load(latest)
            checkpointing.check_same_run(restored.state, identity, tmp)
            restored.restore_module("model", policy.model)
            restored.restore_optimizer(opt)
            sched.load_state_dict(restored.state["scheduler"])
            start, elapsed = restored.step, float(restored.state["elapsed_seconds"])
            log.truncate(restored.state["metrics_bytes"], restored.state["metrics_sha256"])
            note_resume(tmp, start)
            restored.restore_rng(streams)  # last: after every draw the setup made
        else:
            log.path.unlink(missing_ok=True)  # a resumed run that stopped before its first checkpoint starts over
            write_meta(tmp, C.dump(cfg), cfg.seed, "pretrain", run_record(cfg))
        policy.model.train()
        t0 = time.time() - elapsed
        bar = tqdm(range(start + 1, pc.steps + 1), desc="pretrain", unit="step", initial=start, total=pc.steps,
                   disable=quiet)
        # ---- loop: sample a batch of sequences, one optimizer step
        for step in bar:
            checkpointing.fault_point("pretrain", step)
            idx = torch.randint(len(tokens), (pc.batch_size,), generator=gen)
            loss = policy.pretraining_loss(tokens[idx].to(device), loss_mask[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
            bad = nonfinite({"next-token loss": loss.item(), "gradient norm": float(norm)})
            if bad and pc.on_nonfinite == "stop":
                log.log({"step": step, "stopped": True, "nonfinite": bad})
                raise NonFiniteError(nonfinite_message("pretrain", step, bad, ckpts.describe_latest(),
                                                       "pretrain.on_nonfinite"), step, bad)
            if bad:  # skip: this step's update is dropped, the schedule moves on
                opt.zero_grad(set_to_none=True)
                print(f"mitigate pretrain: step {step} skipped (pretrain.on_nonfinite=skip): non-finite "
                      f"{', '.join(f'{k}={v}' for k, v in bad.items())}", file=sys.stderr)
            else:
                opt.step()
            sched.step()
            if bad or step % pc.log_every == 0 or step == pc.steps:
                row = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                       "seconds": round(time.time() - t0, 2)}
                if bad:
                    row.update(skipped=True, nonfinite=bad)
                log.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if pc.save_every and step % pc.save_every == 0 and step < pc.steps:
                check_weights(policy.model, step, "pretrain", ckpts.describe_latest(), "pretrain.on_nonfinite")
                rng_tensors, rng_record = checkpointing.rng_state(streams)
                ckpts.save(step, {**identity, "elapsed_seconds": time.time() - t0, "scheduler": sched.state_dict(),
                                  "metrics_bytes": log.size(), "metrics_sha256": log.digest()},
                           modules, opt, rng_tensors, {"rng": rng_record},
                           write_policy=lambda path: policy.save(path, checkpoint_record(cfg, "base", policy)),
                           fault=lambda s=step: checkpointing.fault_point("checkpoint", s))
        # ---- checkpoint
        check_weights(policy.model, pc.steps, "pretrain", ckpts.describe_latest(), "pretrain.on_nonfinite")
        policy.save(tmp / "checkpoint", checkpoint_record(cfg, "base", policy))
    return Path(out)
