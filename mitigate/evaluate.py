"""Evaluation: n samples per prompt on ID and OOD splits -> pass@k, diversity, token entropy,
with bootstrap intervals over prompts; and the demonstration-bias probe of the base model."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from mitigate.metrics import ci_tree, ks_up_to, mean_metrics, prompt_metrics
from mitigate.policy import sample

EVAL_SPLITS = {"id": "id_test", "blocked": "ood_blocked", "rare": "ood_rare"}


def eval_splits(eval_cfg) -> dict[str, str]:
    """Result key -> task split; the ID key reads `eval.id_split` (id_val for choosing settings)."""
    return {**EVAL_SPLITS, "id": eval_cfg.id_split}


def split_prompts(task, split: str, max_prompts: int = 0) -> list:
    prompts = task.prompts(split)
    return prompts[:max_prompts] if max_prompts else prompts


def sample_prompts(model, task, prompts, n: int, temperature: float, generator, batch_size: int,
                   desc: str = "sample", quiet: bool = False):
    """n samples for each prompt: returns (tokens [P*n, T], correct, concepts, token_entropy)."""
    contexts = [q.tokens for q in prompts for _ in range(n)]
    with tqdm(total=len(contexts), desc=desc, unit="seq", disable=quiet, leave=False) as bar:
        s = sample(model, contexts, task.max_new_tokens, temperature, generator, batch_size, progress=bar)
    rep = [q for q in prompts for _ in range(n)]
    correct, concepts = task.verify(rep, s.tokens.numpy())
    return s.tokens.numpy(), correct, concepts, s.token_entropy.numpy()


def evaluate_split(model, task, prompts, n, temperature, generator, batch_size, desc="eval", quiet=False):
    """Per-prompt metrics, their mean, and bootstrap 95% intervals over prompts."""
    tokens, correct, concepts, ent = sample_prompts(model, task, prompts, n, temperature, generator,
                                                    batch_size, desc, quiet)
    ks = ks_up_to(n)
    rows = []
    for i in range(len(prompts)):
        sl = slice(i * n, (i + 1) * n)
        outputs = [tuple(r) for r in tokens[sl].tolist()]
        row = prompt_metrics(correct[sl], outputs, concepts[sl], ks)
        row["token_entropy"] = float(ent[sl].mean())
        rows.append(row)
    return {"n_prompts": len(prompts), "mean": mean_metrics(rows), "ci95": ci_tree(rows), "rows": rows}


def evaluate(model, task, eval_cfg, seed: int, quiet: bool = False) -> dict:
    """The eval JSON: {"id": {...}, "ood": {"blocked": {...}, "rare": {...}}, "ci95": {...}}."""
    gen = torch.Generator().manual_seed(seed)
    res, ci = {}, {}
    for key, split in eval_splits(eval_cfg).items():
        prompts = split_prompts(task, split, eval_cfg.max_prompts)
        r = evaluate_split(model, task, prompts, eval_cfg.samples, eval_cfg.temperature, gen,
                           eval_cfg.batch_size, desc=f"eval {split}", quiet=quiet)
        res[key], ci[key] = dict(r["mean"], n_prompts=r["n_prompts"]), r["ci95"]
    return {"samples": eval_cfg.samples, "temperature": eval_cfg.temperature, "id_split": eval_cfg.id_split,
            "id": res["id"], "ood": {"blocked": res["blocked"], "rare": res["rare"]},
            "ci95": {"id": ci["id"], "ood": {"blocked": ci["blocked"], "rare": ci["rare"]}}}


@torch.no_grad()
def demonstration_bias(model, task, prompts, n_demos: int = 4, n: int = 64, temperature: float = 1.0,
                       seed: int = 0, batch_size: int = 4096, quiet: bool = False) -> dict:
    """How strongly a correct demonstration in context pulls samples to its concept.

    For each prompt, draw up to n_demos of the model's own correct samples as demonstrations y*;
    sample n continuations with and without `DEMO y* SEP x SEP` in front; report the probability
    that a sample is correct and shares y*'s concept in both cases, averaged over demos and prompts,
    and the teacher's accuracy P(correct | x, y*) next to the plain model's P(correct | x): the
    headroom a self-distillation teacher can give its student.
    """
    gen = torch.Generator().manual_seed(seed)
    tokens, correct, concepts, _ = sample_prompts(model, task, prompts, n, temperature, gen, batch_size,
                                                  "demo-bias plain", quiet)
    rng = np.random.default_rng(seed)
    contexts, owners, demo_concepts = [], [], []
    for i, q in enumerate(prompts):
        good = np.flatnonzero(correct[i * n:(i + 1) * n]) + i * n
        for j in rng.choice(good, size=min(n_demos, len(good)), replace=False) if len(good) else []:
            contexts += [task.teacher_context(q, tokens[j])] * n
            owners.append(i)
            demo_concepts.append(concepts[j])
    if not contexts:  # no correct sample anywhere: nothing to demonstrate
        return {"share_with_demo": float("nan"), "share_without_demo": float("nan"), "lift": float("nan"),
                "pass_at_1_with_demo": float("nan"), "pass_at_1_without_demo": float("nan"),
                "n_prompts": 0, "n_demos": n_demos, "samples": n}
    s = sample(model, contexts, task.max_new_tokens, temperature, gen, batch_size)
    reps = [prompts[o] for o in owners for _ in range(n)]
    t_correct, t_conc = task.verify(reps, s.tokens.numpy())
    with_demo, without = [], []
    for k, (o, c) in enumerate(zip(owners, demo_concepts)):
        with_demo.append(np.mean(t_conc[k * n:(k + 1) * n] == c))
        without.append(np.mean(concepts[o * n:(o + 1) * n] == c))
    per_prompt = {}
    for o, w, wo in zip(owners, with_demo, without):
        per_prompt.setdefault(o, []).append(w - wo)
    lift = [np.mean(v) for v in per_prompt.values()]
    return {"share_with_demo": float(np.mean(with_demo)), "share_without_demo": float(np.mean(without)),
            "lift": float(np.mean(lift)),
            "pass_at_1_with_demo": float(np.mean(t_correct)),
            "pass_at_1_without_demo": float(np.mean([correct[o * n:(o + 1) * n].mean() for o in owners])),
            "n_prompts": len(per_prompt), "n_demos": n_demos, "samples": n}


def evaluate_checkpoint(ckpt, out, overrides=(), seed: int = 0, demo_bias: bool = False,
                        quiet: bool = False) -> dict:
    """`mitigate eval`: the checkpoint's own resolved config (task, eval) plus overrides."""
    from mitigate import config as C
    from mitigate.policy import load_checkpoint
    from mitigate.runs import write_json
    from mitigate.tasks import make_task

    model, meta = load_checkpoint(ckpt)
    data = meta["config"]
    for o in overrides:
        data = C.apply_override(data, o)
    cfg = C.build(C.Config, data)
    task = make_task(cfg.task)
    res = {"method": meta.get("method"), "checkpoint": str(ckpt), "seed": seed,
           **evaluate(model, task, cfg.eval, seed, quiet)}
    if demo_bias:
        res["demo_bias"] = demonstration_bias(model, task, split_prompts(task, cfg.eval.id_split, cfg.eval.max_prompts),
                                              seed=seed, batch_size=cfg.eval.batch_size, quiet=quiet)
    write_json(out, res)
    return res
