"""Evaluation: n samples per prompt on the ID split and the task's OOD splits -> pass@k,
diversity, token entropy, with bootstrap intervals over prompts; and the demonstration-bias
probe of a model.

A task that offers completion texts (`task.completion_text(tokens)`, e.g. sciqa) also gets the
diversity of each prompt's correct answers as text (`metrics.semantic.answer_diversity`: mean
pairwise cosine distance, Vendi score, clusters), embedded by `eval.embedder`; its keys are named
by the embedder's kind (`lexical_*` for TF-IDF, `semantic_*` for sentence embeddings). A task that
also offers uncertainty markers (`task.uncertainty_markers(language)`, sciqa) gets, over all of each
prompt's responses, the rate of those markers and the response length (`metrics.uncertainty`;
`eval.uncertainty_language`). A task without texts (the graph task) gets exactly the rows it had."""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

from mitigate import config as C
from mitigate.core.fields import ConfigError
from mitigate.core.io import check_output_file, nan_for_null, write_json
from mitigate.core.registry import plugin_hint
from mitigate.core.seeding import device_for, torch_stream
from mitigate.metrics import ci_tree, ks_up_to, mean_metrics, prompt_metrics
from mitigate.metrics.ratio import RATIO_KEYS, pcmi_bar, ratio_stats
from mitigate.metrics.semantic import answer_diversity, make_embedder
from mitigate.metrics.uncertainty import marker_stats
from mitigate.policies import CheckpointError, checkpoint_meta, load_policy, resolve_checkpoint
from mitigate.recipes.common import check_decided_by_checkpoint
from mitigate.rollout import generate
from mitigate.tasks import make_task


def id_split(task, eval_cfg) -> str:
    """The task's split for `eval.id_split`: the role `id_test` (report) or `id_val` (choose settings)."""
    return {"id_test": task.test_split, "id_val": task.val_split}[eval_cfg.id_split]


def eval_splits(task, eval_cfg) -> dict[str, str]:
    """Result key -> task split: "id" (see `id_split`) and the task's own OOD splits."""
    return {"id": id_split(task, eval_cfg), **task.ood_splits}


def split_prompts(task, split: str, max_prompts: int = 0) -> list:
    prompts = task.prompts(split)
    return prompts[:max_prompts] if max_prompts else prompts


@lru_cache(maxsize=4)
def cached_embedder(name: str, path: str = "", sha256: str = ""):
    """One embedder per setting and process (a sentence-embedding model loads once per run, not once
    per evaluated model). `path` and `sha256` are passed only when set."""
    settings = {k: v for k, v in (("path", path), ("sha256", sha256)) if v}
    try:
        return make_embedder(name, **settings)
    except TypeError as e:  # e.g. a path given to tfidf, which takes none
        raise ConfigError(f"embedder '{name}' does not take {', '.join(f'eval.embedder_{k}' for k in settings)} "
                          f"({e})") from e


def text_diversity(task, eval_cfg):
    """texts -> {<kind>_cosine_distance, <kind>_vendi, <kind>_clusters} for a task that offers
    completion texts, with the embedder and settings of `eval_cfg`; None for a task without texts.
    Builds (and so checks) the embedder: call it before long work to fail early."""
    if not callable(getattr(task, "completion_text", None)):
        return None
    embedder = cached_embedder(eval_cfg.embedder, eval_cfg.embedder_path, eval_cfg.embedder_sha256)
    return partial(answer_diversity, embedder=embedder, threshold=eval_cfg.cluster_threshold, q=eval_cfg.vendi_q)


def uncertainty_markers(task, eval_cfg) -> list[str] | None:
    """The uncertainty markers of `eval.uncertainty_language` for a task that offers texts and marker
    lists (sciqa); None otherwise. An unknown language is a ConfigError: call it before long work."""
    if not callable(getattr(task, "completion_text", None)) or not callable(getattr(task, "uncertainty_markers",
                                                                                    None)):
        return None
    return task.uncertainty_markers(eval_cfg.uncertainty_language)


def prompt_rows(policy, task, prompts, n, temperature, generator, batch_size, desc="eval", quiet=True,
                diversity=None, r: int = 0, markers=None) -> list[dict]:
    """Per-prompt metrics of n samples each (pass@k, diversity, token entropy); with `diversity`
    (see `text_diversity`), also the diversity of the prompt's correct answers as text; with r > 0,
    the accuracy-free counts among r correct samples (`metrics.distinct_among`); with `markers` (see
    `uncertainty_markers`), the uncertainty-marker rate and length of all its responses."""
    ro = generate(policy, task, prompts, n, temperature, generator, batch_size, desc, quiet)
    tokens, ent = ro.tokens.numpy(), ro.token_entropy.numpy()
    ks = ks_up_to(n)
    rows = []
    for i in range(len(prompts)):
        sl = ro.rows(i)
        outputs = [tuple(x) for x in tokens[sl].tolist()]
        row = prompt_metrics(ro.correct[sl], outputs, ro.labels[sl], ks, r)
        row["token_entropy"] = float(ent[sl].mean())
        good = ro.labels[sl][ro.correct[sl]]
        if diversity is not None:
            row.update(diversity([task.completion_text(t) for t in tokens[sl][ro.correct[sl]]]))
        if markers is not None:
            row.update(marker_stats([task.completion_text(t) for t in tokens[sl]], markers,
                                    ro.mask[sl].sum(-1).numpy()))
        row["label_counts"] = {str(k): int(v) for k, v in zip(*np.unique(good, return_counts=True))}
        rows.append(row)
    return rows


def evaluate_rows(policy, task, eval_cfg, generator, quiet: bool = True, reference: dict | None = None
                  ) -> dict[str, list[dict]]:
    """{result key: per-prompt rows} over the ID split and every OOD split, one generator in turn.
    With a `reference` (`ratio_reference` of the base on the ID prompts) and `eval.ratio_test`, the
    ID rows also carry the ratio test's per-prompt sums (`metrics.ratio`), from exact scoring (no
    sampling, so the samples are those of an evaluation without it)."""
    out = {}
    diversity, markers = text_diversity(task, eval_cfg), uncertainty_markers(task, eval_cfg)
    for key, split in eval_splits(task, eval_cfg).items():
        prompts = split_prompts(task, split, eval_cfg.max_prompts)
        out[key] = prompt_rows(policy, task, prompts, eval_cfg.samples, eval_cfg.temperature, generator,
                               eval_cfg.batch_size, desc=f"eval {split}", quiet=quiet, diversity=diversity,
                               r=eval_cfg.diversity_r, markers=markers)
        if key == "id" and reference is not None and eval_cfg.ratio_test:
            for row, stats in zip(out[key], ratio_rows(policy, prompts, reference, eval_cfg)):
                row.update(stats)
    return out


# ----------------------------------------------------------------------------- the ratio test

@torch.no_grad()
def sequence_logprobs(policy, contexts: list[list[int]], tokens: np.ndarray, temperature: float = 1.0,
                      batch_size: int = 4096) -> np.ndarray:
    """[N] exact log-probability of each completion (EOS included) after its context, under the
    distribution the policy samples from at `temperature` (token-level: log_softmax(logits / T))."""
    out = []
    for lo in range(0, len(contexts), batch_size):
        tok = torch.as_tensor(np.asarray(tokens[lo:lo + batch_size]), dtype=torch.long)
        mask = policy.completion_mask(tok)
        ctx = contexts[lo:lo + batch_size]
        if temperature == 1.0:
            lp = policy.token_logprobs(ctx, tok, mask)
        else:
            full = torch.log_softmax(policy.scores(ctx, tok, mask).materialise().float() / temperature, -1)
            lp = full.gather(-1, tok.to(full.device).unsqueeze(-1)).squeeze(-1)
        out.append((lp.float() * mask.to(lp.device)).sum(-1).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def ratio_reference(base_policy, task, prompts, batch_size: int = 4096) -> dict | None:
    """What the ratio test needs from the base, once per comparison: every correct output of each
    prompt (`task.correct_completions`), its base log-probability log p0(y|x) and its pcmi_bar(y) =
    E_{y* ~ p0(.|x, C)} [log p0(y|x, y*) - log p0(y|x)], with the teacher context of the task
    (`metrics.ratio.pcmi_bar`: every correct output as a demonstration, weighted exactly). None for
    a task whose correct set is not enumerable."""
    if not callable(getattr(task, "correct_completions", None)):
        return None
    outputs = [task.correct_completions(q)[0] for q in prompts]
    contexts = [q.tokens for q, ys in zip(prompts, outputs) for _ in ys]
    base = sequence_logprobs(base_policy, contexts, np.concatenate(outputs) if contexts else np.zeros((0, 1)),
                             1.0, batch_size)
    teacher_ctx, teacher_tok = [], []
    for q, ys in zip(prompts, outputs):
        for demo in ys:
            ctx = task.teacher_context(q, demo)
            teacher_ctx += [ctx] * len(ys)
            teacher_tok.append(ys)
    teacher = sequence_logprobs(base_policy, teacher_ctx,
                                np.concatenate(teacher_tok) if teacher_tok else np.zeros((0, 1)), 1.0, batch_size)
    ref = {"prompts": [list(map(int, q.tokens)) for q in prompts], "outputs": [], "base_logp": [], "pcmi": []}
    i = j = 0
    for ys in outputs:
        P = len(ys)
        b = base[i:i + P]
        ref["outputs"].append(ys.tolist())
        ref["base_logp"].append(b.tolist())
        ref["pcmi"].append(pcmi_bar(b, teacher[j:j + P * P].reshape(P, P)).tolist() if P else [])
        i, j = i + P, j + P * P
    return ref


def ratio_rows(policy, prompts, reference: dict, eval_cfg) -> list[dict]:
    """Per prompt, the ratio test's sums of `policy` at the evaluation temperature against the base
    (`metrics.ratio.ratio_stats`); the reference must be of these prompts."""
    if reference["prompts"] != [list(map(int, q.tokens)) for q in prompts]:
        raise ValueError("the ratio-test reference was made on other prompts than the evaluated ID split "
                         "(eval.id_split or eval.max_prompts changed): rebuild it")
    contexts = [q.tokens for q, ys in zip(prompts, reference["outputs"]) for _ in ys]
    flat = [y for ys in reference["outputs"] for y in ys]
    logp = sequence_logprobs(policy, contexts, np.array(flat, dtype=np.int64).reshape(len(flat), -1),
                             eval_cfg.temperature, eval_cfg.batch_size)
    rows, i = [], 0
    for b, pc in zip(reference["base_logp"], reference["pcmi"]):
        rows.append(ratio_stats(b, logp[i:i + len(b)], pc))
        i += len(b)
    return rows


def evaluate(policy, task, eval_cfg, seed: int, quiet: bool = False) -> dict:
    """The eval JSON: {"id": {...}, "ood": {split: {...}}, "ci95": {...}} with means over prompts."""
    return eval_record(evaluate_rows(policy, task, eval_cfg, torch_stream(seed, "eval"), quiet), eval_cfg)


def eval_record(rows: dict[str, list[dict]], eval_cfg) -> dict:
    """The eval JSON of one model: means over prompts with bootstrap intervals over prompts, and
    every prompt's own row (`per_prompt`, in the split's prompt order) so anyone can recompute."""
    metric_rows = {k: [{m: x for m, x in r.items() if m != "label_counts"} for r in v] for k, v in rows.items()}
    res = {k: dict(mean_metrics(v), n_prompts=len(v)) for k, v in metric_rows.items()}
    ci = {k: ci_tree(v) for k, v in metric_rows.items()}
    ood = [k for k in rows if k != "id"]
    return {"samples": eval_cfg.samples, "temperature": eval_cfg.temperature, "id_split": eval_cfg.id_split,
            "diversity_r": eval_cfg.diversity_r, "ratio_test": eval_cfg.ratio_test, "ratio_columns": list(RATIO_KEYS),
            "id": res["id"], "ood": {k: res[k] for k in ood},
            "ci95": {"id": ci["id"], "ood": {k: ci[k] for k in ood}},
            "per_prompt": {"id": rows["id"], "ood": {k: rows[k] for k in ood}}}


def rows_from_record(record: dict) -> dict[str, list[dict]]:
    """The per-prompt rows of an eval JSON, keyed like `evaluate_rows` (a null, a number that was
    not finite, read back as NaN)."""
    return nan_for_null({"id": record["per_prompt"]["id"], **record["per_prompt"]["ood"]})


@torch.no_grad()
def demonstration_bias(policy, task, prompts, n_demos: int = 4, n: int = 64, temperature: float = 1.0,
                       seed: int = 0, batch_size: int = 4096, quiet: bool = True) -> dict:
    """How strongly a correct demonstration in context pulls samples to its label (concept).

    For each prompt, draw up to n_demos of the model's own correct samples as demonstrations y*;
    sample n continuations with and without y* in the teacher context; report the probability
    that a sample is correct and shares y*'s label in both cases, averaged over demos and prompts,
    and the teacher's accuracy P(correct | x, y*) next to the plain model's P(correct | x): the
    headroom a self-distillation teacher can give its student.
    """
    gen = torch_stream(seed, "eval")
    plain = generate(policy, task, prompts, n, temperature, gen, batch_size, "demo-bias plain", quiet)
    tokens, correct, labels = plain.tokens.numpy(), plain.correct, plain.labels
    rng = np.random.default_rng(seed)
    contexts, owners, demo_labels = [], [], []
    for i, q in enumerate(prompts):
        good = np.flatnonzero(correct[i * n:(i + 1) * n]) + i * n
        for j in rng.choice(good, size=min(n_demos, len(good)), replace=False) if len(good) else []:
            contexts += [task.teacher_context(q, tokens[j])] * n
            owners.append(i)
            demo_labels.append(labels[j])
    if not contexts:  # no correct sample anywhere: nothing to demonstrate
        return {"share_with_demo": float("nan"), "share_without_demo": float("nan"), "lift": float("nan"),
                "pass_at_1_with_demo": float("nan"), "pass_at_1_without_demo": float("nan"),
                "n_prompts": 0, "n_demos": n_demos, "samples": n}
    s = policy.sample(contexts, task.max_new_tokens, temperature, gen, batch_size)
    reps = [prompts[o] for o in owners for _ in range(n)]
    t_correct, t_labels = task.verify(reps, s.tokens.numpy())
    with_demo, without = [], []
    for k, (o, c) in enumerate(zip(owners, demo_labels)):
        with_demo.append(np.mean(t_labels[k * n:(k + 1) * n] == c))
        without.append(np.mean(labels[o * n:(o + 1) * n] == c))
    per_prompt = {}
    for o, w, wo in zip(owners, with_demo, without):
        per_prompt.setdefault(o, []).append(w - wo)
    lift = [np.mean(v) for v in per_prompt.values()]
    return {"share_with_demo": float(np.mean(with_demo)), "share_without_demo": float(np.mean(without)),
            "lift": float(np.mean(lift)),
            "pass_at_1_with_demo": float(np.mean(t_correct)),
            "pass_at_1_without_demo": float(np.mean([correct[o * n:(o + 1) * n].mean() for o in owners])),
            "n_prompts": len(per_prompt), "n_demos": n_demos, "samples": n}


# What an override of `mitigate eval` may set: the evaluation and where it runs. Every other section
# of the checkpoint's config records how the model was made; an evaluation uses none of it.
EVAL_OVERRIDABLE = ("eval", "device")


def check_evaluation_overrides(overrides) -> None:
    """Refuse an override that changes nothing an evaluation does but would be recorded in its
    result as if it had (train.*, pretrain.*, reproduce.*, seed)."""
    keys = [str(o).split("=", 1)[0].strip() for o in overrides]
    idle = [k for k in keys if k.split(".")[0] not in EVAL_OVERRIDABLE]
    if idle:
        hint = "; the sampling seed is --seed" if any(k == "seed" for k in idle) else ""
        raise C.ConfigError(f"mitigate eval applies only eval.* and device overrides; {', '.join(idle)} would change "
                            f"nothing it does but be recorded as if it had (drop {'them' if len(idle) > 1 else 'it'}"
                            f"{hint})")


def evaluate_checkpoint(ckpt, out: str | Path | None = None, overrides=(), seed: int = 0, demo_bias: bool = False,
                        quiet: bool = False, overwrite: bool = False) -> dict:
    """`mitigate eval`: the checkpoint's own resolved config (task, eval) plus overrides. With
    `out`, the result is also written there as JSON (never over an existing file without
    `overwrite`, never inside the checkpoint folder; a place that cannot be written is refused
    before the evaluation runs). The task is the checkpoint's: an override that changes it is
    refused. The result records the task, the resolved config and the overrides."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise C.ConfigError(f"the evaluation seed must be an integer in [0, 2**32), got {seed!r}")
    folder = resolve_checkpoint(ckpt)
    if out is not None:
        out = check_output_file(out, overwrite, inputs=[folder])
    meta = checkpoint_meta(folder)
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint record '{folder}/mitigate.json' holds no resolved config to evaluate with")
    try:
        C.from_dict(meta["config"])
    except C.ConfigError as e:
        raise CheckpointError(f"checkpoint '{folder}' records a config this version cannot use: {e}"
                              f"{plugin_hint(e)}") from e
    cfg = C.from_dict(meta["config"], list(overrides))
    check_decided_by_checkpoint(meta, cfg, folder)  # a model is evaluated on its own task, as it is
    check_evaluation_overrides(overrides)
    task = make_task(cfg.task)
    text_diversity(task, cfg.eval)  # a bad embedder setting fails before the model loads
    uncertainty_markers(task, cfg.eval)  # and so does an unknown marker language
    policy, meta = load_policy(folder, device_for(cfg.device))
    res = {"method": meta.get("method"), "checkpoint": str(ckpt), "seed": seed, "task": C.to_dict(cfg.task),
           "overrides": list(overrides), **evaluate(policy, task, cfg.eval, seed, quiet)}
    if demo_bias:
        res["demo_bias"] = demonstration_bias(policy, task, split_prompts(task, id_split(task, cfg.eval),
                                                                           cfg.eval.max_prompts),
                                              seed=seed, batch_size=cfg.eval.batch_size, quiet=quiet)
    res["config"] = C.to_dict(cfg)
    if out is not None:
        write_json(out, res)
    return res
