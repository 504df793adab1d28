"""The on-policy recipe: sample G rollouts per prompt -> verify -> objective (+ regularizers) ->
optimizer step -> periodic probe -> checkpoint. Driven by `accelerate`: CPU by default, and the
same code under `accelerate launch` on several processes or GPUs (prompts are sharded across
processes, gradients averaged by DDP).

The run works in `OUT.partial` and writes a resume checkpoint every `train.save_every` steps
(`mitigate.core.resume`); `resume=True` continues from the last one and ends bit-identical to an
uninterrupted run. A non-finite loss term or gradient stops the run (`NonFiniteError`, the last
good checkpoint kept) or, with `train.on_nonfinite: skip`, drops that step's update (logged)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.budget import Budget, Metered, MeteredTask
from mitigate.core import resume as checkpointing
from mitigate.core.guard import NonFiniteError, check_weights, nonfinite, nonfinite_message
from mitigate.core.io import (
    MetricsLog,
    partial_path,
    plan_run,
    resumable_run,
    versions,
    write_json,
    write_meta,
)
from mitigate.core.seeding import device_for, numpy_stream, torch_stream
from mitigate.core.tracking import Trackers, parse_report_to
from mitigate.metrics import distinct_among, pass_at_k
from mitigate.objectives import OBJECTIVES, Batch, Context, Teacher
from mitigate.objectives.base import make_term
from mitigate.ops import aggregate, k3_kl, masked_mean, reverse_kl_anchor
from mitigate.policies import load_policy, resolve_checkpoint, scores_of
from mitigate.recipes.common import (
    check_decided_by_checkpoint,
    checkpoint_record,
    finished_run,
    init_digest,
    note_resume,
    run_record,
)
from mitigate.regularizers import REGULARIZERS
from mitigate.rollout import generate
from mitigate.tasks import make_task

BEST_FOLDER = "best_probe"  # train.keep: best_probe: the best-probed weights so far, in the work folder


def prompt_order(n: int, steps: int, per_step: int, seed: int) -> np.ndarray:
    """Prompt indices per step: shuffled passes over the pool, identical on every process."""
    rng = numpy_stream(seed, "prompt_order")
    need = steps * per_step
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])
    return order[:need].reshape(steps, per_step)


def probe(policy, task, cfg: C.Config, generator: torch.Generator) -> dict:
    """pass@1, pass@n and distinct labels on the first `probe_prompts` validation prompts (n =
    `probe_samples`), and the accuracy-free count `probe_concepts_at_r`: distinct labels expected
    among r = `eval.diversity_r` correct samples, averaged over the prompts with at least r correct
    (None when no prompt has r, or r = 0). All from the same samples: no extra random draw."""
    prompts = task.prompts(task.val_split)[: cfg.train.probe_prompts]
    n = cfg.train.probe_samples
    r = generate(policy, task, prompts, n, cfg.eval.temperature, generator, cfg.eval.batch_size)
    c = r.correct.reshape(len(prompts), n)
    labels = r.labels.reshape(len(prompts), n)
    correct_labels = [labels[i][c[i]] for i in range(len(prompts))]
    at = cfg.eval.diversity_r
    at_r = [distinct_among(x.tolist(), at) for x in correct_labels if at and len(x) >= at]
    return {"probe_pass_at_1": float(np.mean([pass_at_k(n, int(x), 1) for x in c.sum(1)])),
            "probe_concepts": float(np.mean([len(set(x)) for x in correct_labels])),
            "probe_token_entropy": float(r.token_entropy.numpy().mean()),
            "probe_pass_at_n": float(np.mean([pass_at_k(n, int(x), n) for x in c.sum(1)])),
            "probe_concepts_at_r": float(np.mean(at_r)) if at_r else None}


def train(cfg: C.Config, init: str | Path, out: str | Path, overwrite: bool = False, quiet: bool = False,
          method: str | None = None, resume: bool = False, report_to: str = "none") -> Path:
    """Post-train from the checkpoint `init` into the run folder `out`. `resume`: continue the
    unfinished run in `OUT.partial` from its last checkpoint (a finished `out` with this config is
    returned as it is)."""
    # ---- setup: processes, task, policy, frozen reference, teacher, optimizer, random streams
    device_for(cfg.device)  # 'cuda' without a GPU is an error, never a silent CPU run
    accelerator = fresh_accelerator(cpu=cfg.device == "cpu")
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    tc = cfg.train
    method = method or tc.objective.name
    plan = plan_run(out, overwrite, inputs=[init], resume=resume) if main else None
    if plan is not None and plan.status == "complete":
        finished_run(plan.out, cfg, quiet)
        return Path(out)
    check_horizons(tc)
    if tc.prompts_per_step % world:
        raise C.ConfigError(f"train.prompts_per_step ({tc.prompts_per_step}) must divide by the number of "
                            f"processes ({world})")
    set_seed(cfg.seed)
    task = make_task(cfg.task)
    objective = make_term(OBJECTIVES.get(tc.objective.name, "train.objective.name"))
    regularizers = [(make_term(REGULARIZERS.get(r.name, "train.regularizers")), r) for r in tc.regularizers]
    init_ckpt = resolve_checkpoint(init)
    policy, meta = load_policy(init_ckpt, accelerator.device)
    check_decided_by_checkpoint(meta, cfg, init)  # task and model are the checkpoint's: an override is refused
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
    G, dev = tc.group_size, accelerator.device
    # ---- what a resume checkpoint holds and checks (`mitigate.core.resume`)
    terms = [("objective", objective)] + [(f"regularizers[{i}]", t) for i, (t, _) in enumerate(regularizers)]
    streams = {"rollouts": rollout_gen, "objective": ctx.generator, "reference": ctx.reference_generator,
               "probe": probe_gen}
    modules = {"model": policy.model, **({"teacher": teacher.weights.model} if teacher.kind == "ema" else {})}
    identity = {"kind": "train", "method": method, "config": C.to_dict(cfg), "versions": versions(),
                "init": init_digest(init_ckpt) if tc.save_every or resume else None,
                "prompt_order": hashlib.sha256(order.tobytes()).hexdigest()}

    parse_report_to(report_to)  # an unknown or uninstalled tracker is refused before any work
    folder = resumable_run(plan) if main else _NullFolder(partial_path(out))
    with folder as tmp, Trackers(report_to if main else "none", tmp, Path(out).name, C.to_dict(cfg)) as trackers:
        accelerator.wait_for_everyone()
        ckpts = checkpointing.Checkpoints(tmp, rank, world, accelerator.wait_for_everyone)
        log = MetricsLog(tmp / "metrics.jsonl", mirror=trackers.log)
        latest = ckpts.latest() if resume else None
        start, elapsed = 0, 0.0
        best = (None, 0)  # (probe pass@1, step) of the weights in BEST_FOLDER (train.keep: best_probe)
        if latest is not None:  # ---- resume: check the run is this one, then restore every piece of state
            restored = ckpts.load(latest)
            checkpointing.check_same_run(restored.state, identity, tmp)
            for name, module in modules.items():
                restored.restore_module(name, module)
            restored.restore_optimizer(opt)
            restored.restore_terms(terms, pool)
            for k, v in restored.rank_record["budget"].items():
                setattr(budget, k, v)
            start, elapsed = restored.step, float(restored.state["elapsed_seconds"])
            best = tuple(restored.state.get("best_probe", best))
            if main:
                log.truncate(restored.state["metrics_bytes"], restored.state["metrics_sha256"])
                note_resume(tmp, start)
            restored.restore_rng(streams)  # last: after every draw the setup made
        elif main:
            log.path.unlink(missing_ok=True)  # a resumed run that stopped before its first checkpoint starts over
            write_meta(tmp, C.dump(cfg), cfg.seed, f"train {method} from {init}", run_record(cfg))
            log.log({"step": 0, **probe(policy, task, cfg, probe_gen)})

        def save(step: int) -> None:
            check_weights(policy.model, step, "train", ckpts.describe_latest(), "train.on_nonfinite")
            rng_tensors, rng_record = checkpointing.rng_state(streams)
            term_tensors, term_record = checkpointing.term_state(terms, pool)
            record = {**identity, "elapsed_seconds": time.time() - t0, "best_probe": list(best)}
            if main:
                record.update(metrics_bytes=log.size(), metrics_sha256=log.digest())
            ckpts.save(step, record, modules, opt, {**rng_tensors, **term_tensors},
                       {"rng": rng_record, "terms": term_record, "budget": budget.to_dict()},
                       write_policy=lambda path: policy.save(path, checkpoint_record(cfg, method, policy)),
                       fault=lambda: checkpointing.fault_point("checkpoint", step))

        t0 = time.time() - elapsed
        bar = tqdm(range(start + 1, tc.steps + 1), desc=f"train {method}", unit="step", initial=start,
                   total=tc.steps, disable=quiet or not main)
        for step in bar:
            checkpointing.fault_point("train", step)
            ctx.step = step
            # ---- rollouts: this process's share of the step's prompts, G samples each, verified
            idx = order[step - 1].reshape(world, -1)[rank]
            prompts = [pool[i] for i in idx]
            r = generate(student, train_task, prompts, G, tc.temperature, rollout_gen, cfg.eval.batch_size)
            tokens, mask = r.tokens.to(dev), r.mask.float().to(dev)
            correct = torch.as_tensor(r.correct, device=dev)
            # ---- scores fixed for the step: the reference's scores (a stop-gradient target). Nothing
            # here or below is [B, T, V] unless the policy's own `Scores` are (`mitigate.policies.base`).
            with torch.no_grad():
                ref = scores_of(reference, r.contexts, tokens, mask)
            # ---- objective + KL anchor + regularizers, `inner_epochs` optimizer passes
            skipped, old = None, None
            for _ in range(tc.inner_epochs):
                scores = student.scores(r.contexts, tokens, mask)
                if old is None:  # the sampling policy's token log-probs: the first pass's, before any update
                    old = scores.token_logprobs().detach()
                batch = Batch(prompts=prompts, group_index=r.group_index.to(dev), contexts=r.contexts,
                              tokens=tokens, mask=mask, rewards=correct.float(), correct=correct,
                              labels=torch.as_tensor(r.labels, device=dev),
                              scores=scores, old_token_logprobs=old, reference=ref)
                loss, scalars, values, kl_base = step_loss(batch, ctx, objective, regularizers, tc, log_kl=main)
                opt.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                norm = None
                if tc.grad_clip > 0:
                    norm = accelerator.clip_grad_norm_(policy.model.parameters(), tc.grad_clip)
                bad = nonfinite({**values, "gradient norm": grad_norm(policy.model, norm)})
                if world > 1:  # every process takes the same decision (gradients are shared)
                    flag = accelerator.reduce(torch.tensor([float(bool(bad))], device=dev), "sum")
                    bad = bad or ({"another process": float("nan")} if float(flag) > 0 else {})
                if bad:
                    if tc.on_nonfinite == "stop":
                        if main:
                            log.log({"step": step, "stopped": True, "nonfinite": bad})
                        raise NonFiniteError(nonfinite_message("train", step, bad, ckpts.describe_latest(),
                                                               "train.on_nonfinite"), step, bad)
                    opt.zero_grad(set_to_none=True)
                    skipped = bad
                    break
                opt.step()
            if skipped is None:
                teacher.after_step()
            elif main:
                print(f"mitigate train: step {step} skipped (train.on_nonfinite=skip): non-finite "
                      f"{', '.join(f'{k}={v}' for k, v in skipped.items())}", file=sys.stderr)
            # ---- log (main process): batch statistics, and the probe every `eval_every` steps
            if main:
                kl_base = masked_mean(kl_base, mask)
                labels = r.labels.reshape(len(prompts), G)
                row = {"step": step, "loss": float(loss.detach()), "reward": float(correct.float().mean()),
                       "kl_base": float(kl_base), "token_entropy": float(r.token_entropy.mean()),
                       "batch_concepts": float(np.mean([len(set(x[x >= 0])) for x in labels])),
                       "seconds": round(time.time() - t0, 2), **scalars}
                if skipped is not None:
                    row.update(skipped=True, nonfinite=skipped)
                if step % tc.eval_every == 0 or step == tc.steps:
                    row.update(probe(policy, task, cfg, probe_gen))
                    if tc.keep == "best_probe" and (best[0] is None or row["probe_pass_at_1"] > best[0]):
                        best = (row["probe_pass_at_1"], step)
                        policy.save(tmp / BEST_FOLDER, checkpoint_record(cfg, method, policy))
                log.log(row)
                if step in tc.horizons:
                    keep_horizon(tmp, step, best, policy, checkpoint_record(cfg, method, policy), tc.keep)
                bar.set_postfix(reward=f"{row['reward']:.2f}", kl=f"{row['kl_base']:.3f}")
            if tc.save_every and step % tc.save_every == 0 and step < tc.steps:
                save(step)
        # ---- checkpoint and budget (this process's share; the probe is evaluation, not counted)
        accelerator.wait_for_everyone()
        check_weights(policy.model, tc.steps, "train", ckpts.describe_latest(), "train.on_nonfinite")
        if main:
            budget.wall_seconds = round(time.time() - t0, 2)
            write_json(tmp / "budget.json", {**budget.to_dict(), "processes": world})
            if tc.keep == "best_probe" and (tmp / BEST_FOLDER).is_dir():
                os.replace(tmp / BEST_FOLDER, tmp / "checkpoint")
                write_json(tmp / "kept.json", {"keep": tc.keep, "step": best[1], "probe_pass_at_1": best[0]})
            else:
                policy.save(tmp / "checkpoint", checkpoint_record(cfg, method, policy))
    accelerator.wait_for_everyone()
    return Path(out)


def fresh_accelerator(cpu: bool) -> Accelerator:
    """The run's Accelerator, in the precision the launcher asks for (`accelerate launch
    --mixed_precision`, i.e. ACCELERATE_MIXED_PRECISION; float32 without one). accelerate keeps one
    AcceleratorState per process and ignores the settings of a later Accelerator: a state left by
    another library in this process (a transformers or TRL Trainer, whose default on CPU is bf16)
    would silently change this run's numbers. Such a state is reset; the distributed PartialState
    (processes, device) is kept."""
    wanted = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", wanted) != wanted:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=wanted)


# ----------------------------------------------------------------------------- one step's algorithm
def step_loss(batch: Batch, ctx: Context, objective, regularizers: list, tc, log_kl: bool = True
              ) -> tuple[torch.Tensor, dict, dict, torch.Tensor | None]:
    """The loss of one optimizer pass on one batch of rollouts, the whole algorithm of a step:

        L = L_objective(batch) + kl_coef * agg_t KL(pi || p0)_t + sum_j coef_j * R_j(batch)

    with the anchor KL(pi || p0) to the frozen base shared by every objective (`train.kl_estimator`:
    the exact full-vocabulary reverse KL with its sequence-level score term, `ops.reverse_kl_anchor`,
    or k3 on the sampled tokens). `objective` and `regularizers` are the run's terms (`make_term`) and
    `[(term, its config)]`; `tc` the train config. Returns (loss, scalars for metrics.jsonl, the
    values the non-finite guard checks, the per-token KL to the base [B, T] for the log, or None
    unless `log_kl`). Pure apart from the terms' own draws from `ctx`: the loop (sampling, the
    update, the guard, checkpoints) calls it, and so can an ablation script or a benchmark."""
    mask, ref = batch.mask, batch.reference
    loss, scalars = objective(batch, ctx, tc.objective)
    values = {f"objective ({tc.objective.name})": float(loss.detach())}
    kl_base = None
    if tc.kl_coef > 0:
        if tc.kl_estimator == "k3":
            anchor = k3_kl(batch.token_logprobs(), ref.token_logprobs())
        else:
            anchor, kl_base = reverse_kl_anchor(batch.divergence(ref, "reverse_kl"), batch.token_logprobs(), mask)
        anchor = aggregate(anchor, mask, "token_mean")
        loss = loss + tc.kl_coef * anchor
        scalars["kl_anchor_loss"] = float(anchor.detach())
        values["kl_anchor"] = scalars["kl_anchor_loss"]
    for i, (term, rcfg) in enumerate(regularizers):
        r_loss, r_scalars = term(batch, ctx, rcfg)
        loss = loss + rcfg.coef * r_loss
        scalars.update({f"{rcfg.name}/{k}": v for k, v in r_scalars.items()})
        scalars[f"{rcfg.name}/loss"] = float(r_loss.detach())
        values[f"regularizers[{i}] ({rcfg.name})"] = scalars[f"{rcfg.name}/loss"]
    if log_kl and kl_base is None:  # logged: the student's full-vocabulary KL to the reference, before the update
        with torch.no_grad():
            kl_base = batch.divergence(ref, "reverse_kl")
    return loss, scalars, values, kl_base


def check_horizons(tc) -> None:
    """`train.horizons`: distinct whole numbers 0 < h < steps; with `keep: best_probe`, multiples of
    `eval_every`, so that the probes up to h are exactly those the h-step run makes."""
    for h in tc.horizons:
        if isinstance(h, bool) or not isinstance(h, int) or not 0 < h < tc.steps:
            raise C.ConfigError(f"train.horizons: {h!r} is not a whole number of steps between 1 and "
                                f"train.steps - 1 ({tc.steps - 1})")
        if tc.keep == "best_probe" and h % tc.eval_every:
            raise C.ConfigError(f"train.horizons: {h} is not a multiple of train.eval_every ({tc.eval_every}); "
                                "with train.keep=best_probe a horizon must fall on a probe step")
    if len(set(tc.horizons)) != len(tc.horizons):
        raise C.ConfigError(f"train.horizons has repeated values: {tc.horizons}")


def keep_horizon(tmp: Path, h: int, best: tuple, policy, record: dict, keep: str) -> None:
    """At step h, write `tmp/horizon-<h>/`: the checkpoint a run with `steps=h` keeps. Exact, because
    the prompt order, every random stream and every probe of the first h steps do not depend on
    `train.steps` (`prompt_order` draws whole passes in turn; the learning rate is constant)."""
    folder = tmp / f"horizon-{h}"
    if keep == "best_probe" and (tmp / BEST_FOLDER).is_dir():
        shutil.copytree(tmp / BEST_FOLDER, folder / "checkpoint", dirs_exist_ok=True)
        write_json(folder / "kept.json", {"keep": keep, "step": best[1], "probe_pass_at_1": best[0], "horizon": h})
    else:
        policy.save(folder / "checkpoint", record)
        write_json(folder / "kept.json", {"keep": "last", "step": h, "horizon": h})


def grad_norm(model: torch.nn.Module, norm=None) -> float:
    """The total gradient norm (`norm`: the one gradient clipping already computed)."""
    if norm is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        norm = torch.nn.utils.get_total_norm(grads)
    return float(norm)


class _NullFolder:
    """Non-main processes write nothing."""

    def __init__(self, out):
        self.out = Path(out)

    def __enter__(self):
        return self.out

    def __exit__(self, *exc):
        return False
