"""`mitigate theory`: the exact report of mitigate.theory, plus a probe of a trained network.

The probe enumerates every valid path y of selected ID prompts, computes the exact sequence
probabilities p(y|x) and p(y|x, y*) under the base model for every demonstration y* among those
paths, and from them the SDSD tilt (docs/design.md, the science):

    E_{y*}[pcmi(y; y*|x)] = sum_{y*} d(y*) [log p(y|x,y*) - log p(y|x)],  d(y*) ∝ p(y*|x) on correct y*
    p_SD(y) ∝ p(y|x) exp(E_{y*}[pcmi])                                    (mitigate.theory.sdsd_optimum)

Per concept c it predicts the log shift of the concept's share among correct outputs,
log(p_SD(c) / p(c)), and compares it with the measured log shift of trained SDSD checkpoints,
log(p_trained(c) / p(c)), also computed exactly from the enumerated paths (no sampling noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from mitigate import config as C
from mitigate.core.io import run_folder, write_json, write_text
from mitigate.policies import load_policy, resolve_checkpoint
from mitigate.tasks import make_task
from mitigate.theory import theory_report


@torch.no_grad()
def path_logprobs(policy, task, prompt, paths: np.ndarray, context: list[int] | None = None) -> np.ndarray:
    """log p(path + end of sequence | context) for every enumerated path (context: the prompt)."""
    cont = torch.as_tensor(np.concatenate([paths, np.full((len(paths), 1), task.vocab.eos)], 1))
    ctx = [context or prompt.tokens] * len(paths)
    mask = torch.ones_like(cont)
    lp = policy.logprobs(ctx, cont, mask)
    lp = lp.gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1).double().numpy()


def concept_shares(logp: np.ndarray, concepts: np.ndarray, n_concepts: int) -> np.ndarray:
    p = np.exp(logp - logp.max())
    return np.bincount(concepts, weights=p, minlength=n_concepts) / p.sum()


def probe_prompt(base, task, prompt) -> dict:
    t = task.path_table(prompt.start, prompt.goal)
    logp = path_logprobs(base, task, prompt, t.paths)  # [P]
    teacher = np.stack([path_logprobs(base, task, prompt, t.paths, task.teacher_context(prompt, y_star))
                        for y_star in t.paths])  # [P*, P]: log p(y | x, y*)
    demo = np.exp(logp - logp.max())
    demo /= demo.sum()
    pcmi = demo @ (teacher - logp[None, :])  # expected pcmi per path
    tilted = logp + pcmi
    k = task.n_concepts
    return {"concepts": t.concepts, "paths": t.paths, "logp": logp, "pcmi": pcmi,
            "base_share": concept_shares(logp, t.concepts, k), "pred_share": concept_shares(tilted, t.concepts, k)}


def run_theory(out: Path, ckpt: str | None = None, sdsd_runs: list[str] = (), quiet: bool = False,
               n_prompts: int = 24, overwrite: bool = False) -> dict:
    """theory.json (numbers and curves), theory.md and, with a checkpoint, the network probe
    (probe_rows.json, probe.md). Figures: `python -m analysis figures OUT`."""
    if sdsd_runs and not ckpt:
        raise C.ConfigError("--sdsd needs --ckpt BASE: the measured concept shift of an SDSD run is relative to "
                            "the base model it was trained from")
    for run in [ckpt, *sdsd_runs] if ckpt else []:
        resolve_checkpoint(run)  # a path that holds no checkpoint is refused before any work
    inputs = [ckpt, *sdsd_runs] if ckpt else list(sdsd_runs)
    with run_folder(out, overwrite, inputs=inputs) as tmp:
        result = {"exact": theory_report(tmp)}
        if ckpt:
            result["probe"] = network_probe(tmp, ckpt, sdsd_runs, quiet, n_prompts)
        write_json(tmp / "theory.json", _jsonable(result))
    return result


def network_probe(out: Path, ckpt: str, sdsd_runs: list[str], quiet: bool, n_prompts: int) -> dict:
    base, meta = load_policy(ckpt)
    task = make_task(C.from_dict(meta["config"]).task)
    if not hasattr(task, "path_table"):
        raise C.ConfigError(f"the network probe enumerates every correct output; task '{task.name}' does not "
                            "(it needs `path_table`)")
    trained = [load_policy(r)[0] for r in sdsd_runs]
    prompts = task.prompts(task.test_split)[:n_prompts]
    pred, meas, rows = [], [], []
    for q in tqdm(prompts, desc="theory probe", disable=quiet):
        r = probe_prompt(base, task, q)
        feasible = np.unique(r["concepts"])
        measured = [concept_shares(path_logprobs(m, task, q, r["paths"]), r["concepts"], task.n_concepts)
                    for m in trained]
        for c in feasible:
            p_tilt = float(np.log(r["pred_share"][c] / r["base_share"][c]))
            row = {"start": q.start, "goal": q.goal, "concept": int(c), "base_share": float(r["base_share"][c]),
                   "predicted_share": float(r["pred_share"][c]), "predicted_log_shift": p_tilt}
            if measured:
                share = float(np.mean([m[c] for m in measured]))
                row.update(measured_share=share, measured_log_shift=float(np.log(share / r["base_share"][c])))
                pred.append(p_tilt)
                meas.append(row["measured_log_shift"])
            rows.append(row)
    res = {"n_prompts": len(prompts), "n_points": len(rows), "sdsd_runs": list(sdsd_runs)}
    if meas:
        rho, pval = spearmanr(pred, meas)
        res.update(spearman_rho=float(rho), p_value=float(pval))
    top = [r for r in rows if r["base_share"] == max(x["base_share"] for x in rows
                                                      if (x["start"], x["goal"]) == (r["start"], r["goal"]))]
    res["mean_predicted_log_shift_top_concept"] = float(np.mean([r["predicted_log_shift"] for r in top]))
    write_json(out / "probe_rows.json", rows)
    lines = ["# Network probe: predicted SDSD tilt vs measured concept shift", "",
             f"Base checkpoint `{ckpt}`; {len(prompts)} ID test prompts, {len(rows)} (prompt, concept) points.",
             "Mean predicted log-shift of each prompt's top concept: "
             f"{res['mean_predicted_log_shift_top_concept']:.3f}."]
    if meas:
        lines.append(f"Spearman rho (predicted vs measured log-shift, {len(sdsd_runs)} SDSD runs): "
                     f"{res['spearman_rho']:.3f} (p = {res['p_value']:.2g}).")
    write_text(out / "probe.md", "\n".join(lines) + "\n")
    return res


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
