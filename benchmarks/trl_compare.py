"""Side by side with TRL: mitigate's GRPO and SDSD training steps vs TRL's `GRPOTrainer` and
`trl.experimental.sdpo.SDPOTrainer`, in one run, with the fraction of the compute floor.

What runs. One worker process per trainer (`spawn`), all alive at once but only one stepping at a
time: the driver sends "go" to mitigate's GRPO, waits for its step to finish, then TRL's GRPO, then
mitigate's SDSD, then TRL's SDPO, round after round (A, B, A, B, ...), so load from other jobs hits
both sides of a comparison alike. Every worker starts from the same pretrained checkpoint (one
`mitigate.pretrain` of the `default` preset, `--pretrain-steps`; or `--base`), sees the same prompts
in the same order (`mitigate.recipes.train.prompt_order`: TRL's dataset is that order with
`shuffle_dataset=False`) and is scored by the same verifier (`GraphTask.verify`, reward 1 for a
correct path, 0 otherwise). Both run fp32 with the same torch thread count (`--threads`).

    mitigate  `mitigate.train(cfg, base, out)` itself, unmodified. The loop calls
              `mitigate.core.resume.fault_point("train", step)` before every step (a documented test
              hook); the worker replaces it with a gate that reports the time since the previous "go"
              and waits for the next one. So a step's time is the whole loop body (sampling,
              verification, scoring, loss, backward, clipping, optimizer, metrics row), and the run
              is stopped at the gate of step warmup+steps+1, before the final probe evaluation
              (`train.eval_every` is set past the run, `train.save_every=0`).
    TRL       `GRPOTrainer` / `SDPOTrainer`.train() with a `TrainerCallback` gate in `on_step_begin`:
              a step is from one `on_step_begin` to the next (generation, rewards, reference/teacher
              scoring, loss, backward, clipping, optimizer, scheduler, logging and the next batch's
              fetch), the same span as on mitigate's side.

Times are `time.perf_counter` (after `torch.cuda.synchronize()` on CUDA). The first `--warmup`
steps of every worker are dropped; median, min and max are over the next `--steps`. `ratio` is the
median over rounds of t_TRL / t_mitigate (so a slow spell shared by a round cancels); `ratio of
medians` is given too. Read ratio > 1 as "mitigate is that many times faster".

Settings shared by both sides (the `default` preset's train.*): 64 prompts x 8 rollouts, 7 new
tokens, temperature 1.0, no top-k / top-p, one optimizer step per generation batch (no inner
epochs: TRL `steps_per_generation=1`, `num_iterations=1`, `gradient_accumulation_steps=1`), AdamW
lr 3e-5 constant, betas (0.9, 0.99), no weight decay, gradient clipping at norm 1.0, beta 0.02, no
gradient checkpointing, no dropout, fp32 (TRL's defaults `bf16=True` and
`gradient_checkpointing=True` are turned off).

GRPO. mitigate `grpo` (clip 0.2, group-std scaled advantages, token-mean loss) + beta * k3 KL
anchor to the frozen base (`train.kl_estimator=k3`, what TRL computes; `--grpo-kl-estimator
full_vocab` for the preset's exact-gradient anchor) vs TRL `GRPOTrainer` with `loss_type="dapo"`
(token mean over the batch), `scale_rewards="group"`, `epsilon=0.2`, `beta=0.02` (a reference
model, k3 per token). Remaining differences: advantage eps 1e-6 (mitigate) vs 1e-4 (TRL); mitigate
also scores the rollouts once under no-grad for the importance ratio's denominator, TRL uses the
detached current log-probs when there is one step per generation; TRL samples with HF
`model.generate` (every row runs its prompt), mitigate runs each distinct prompt once and shares its
KV cache across the group.

SDSD vs SDPO (`trl.experimental.sdpo`, the self-distillation trainer that takes its demonstrations
from the model's own successful rollouts; `trl.experimental.sdft` conditions the teacher on a fixed
`privileged_context` column from the dataset instead, which is not this objective). SDPO is set to
`distillation_weight=1.0` (pure distillation), `distillation_mode="full_logits"`,
`distillation_alpha=1.0` (full-vocabulary reverse KL(student || teacher) per token, as mitigate's
`sdsd` with `divergence=reverse_kl`, `estimator=full_vocab`), `teacher_model_kind="live"` (the current
weights under no-grad, as mitigate's `teacher=live`), success threshold 1.0 on the 0/1 reward,
and its reprompt template is made to produce mitigate's teacher context token for token: a chat
template renders the student prompt as `<bos> s g <sep>` and the teacher prompt as
`<demo> y* <sep> s g <sep>` (`GraphTask.teacher_context`). mitigate's `sdsd` is set to
`aggregation=seq_mean`, which is SDPO's reduction (mean over each rollout's tokens, then over all
rollouts, rollouts without a demonstration counting as 0). What still differs:
  * the demonstration: mitigate draws it uniformly from the other correct rollouts of the group
    (the rollout itself when it is the group's only correct one); SDPO takes the first other
    successful rollout of the group, and a rollout that is its group's only success gets no
    teacher (`dont_reprompt_on_self_success=True`, the default);
  * the KL anchor: mitigate adds beta * KL(pi || base) (the preset's 0.02, exact full-vocabulary
    gradient; `--sdsd-kl-coef`) and scores every rollout under the frozen base model; SDPO has no
    reference term in its distillation loss (its `beta` is unused there), so TRL does one
    forward pass less per step. mitigate scores the base model even at `--sdsd-kl-coef 0` (for
    the logged kl_base) and also runs the no-grad scoring pass of GRPO above;
  * SDPO builds the teacher prompt as text: it decodes the demonstration, formats the templates,
    renders the chat template and tokenizes (the student prompts too go through the chat
    template); mitigate assembles token lists.

Compute floor. FLOPs counted from the model shape and the token counts, with P = non-embedding
parameters, d = width, l = layers, V = vocabulary, c = prompt length (4), T = max new tokens (7,
the padded length every batch is computed at): a processed position costs 2P + 4*l*d*k (attention
over k keys) plus 2*d*V where its logits are needed. Sampling: each distinct prompt's first c-1
positions once, then T positions per rollout with logits. Scoring a rollout: positions 1..c+T-1,
logits at the T completion positions. Policy scoring with gradient = 3x its forward; the
reference (GRPO; mitigate's SDSD when its KL coefficient is > 0) and the teacher (SDSD, context
`<demo> y* <sep> s g <sep>` with a demonstration of T-1 nodes: c_t = T + 4) one forward each.
Softmax, layer norms, the divergences, sampling and the optimizer are not counted, so it is a
lower bound. `peak`: the best fp32 `torch.matmul` rate measured in the same run, once per round,
at NxN (`--matmul-n`) and at the model's MLP shape [B*(c+T), d] x [d, 4d]. floor = FLOPs / peak;
`of floor` = floor / median step time (1.0 would be a step at the matmul peak).

Also in the table, as a check that both sides did comparable work: `len`, the mean completion
length in tokens (EOS included), `reward`, the share of correct rollouts, and for SDSD `distil`, the
share of rollouts that had a teacher (a demonstration), averaged over the timed steps.

    .venv/bin/python benchmarks/trl_compare.py                      # CPU, warmup 2, steps 10
    .venv/bin/python benchmarks/trl_compare.py --steps 3 --warmup 1 --pairs grpo   # a quick check
    .venv/bin/python benchmarks/trl_compare.py --device cuda --width 512 --layers 8 --heads 8

TRL is a benchmark-only dependency: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics as st
import sys
import tempfile
import time
import traceback
from pathlib import Path

PAIRS = ("grpo", "sdsd")
TRL_NAME = {"grpo": "trl GRPOTrainer", "sdsd": "trl SDPOTrainer"}
MITIGATE_NAME = {"grpo": "mitigate grpo", "sdsd": "mitigate sdsd"}


class StopBenchmark(Exception):
    """Raised at a worker's gate when the driver has all the steps it needs."""


# ----------------------------------------------------------------------------- configuration

def mitigate_config(spec: dict, objective: str | None = None):
    """The `default` preset with the benchmark's shape, batch and step count."""
    import mitigate

    overrides = [f"device={spec['device']}", f"seed={spec['seed']}",
                 f"model.n_embd={spec['width']}", f"model.n_layer={spec['layers']}", f"model.n_head={spec['heads']}",
                 f"pretrain.steps={spec['pretrain_steps']}", "pretrain.save_every=0",
                 f"train.steps={spec['train_steps']}", f"train.prompts_per_step={spec['prompts']}",
                 f"train.group_size={spec['group']}", f"train.temperature={spec['temperature']}",
                 "train.eval_every=1000000000", "train.save_every=0", "train.inner_epochs=1"]
    if spec.get("lr") is not None:
        overrides.append(f"train.lr={spec['lr']}")
    if spec.get("beta") is not None:
        overrides.append(f"train.kl_coef={spec['beta']}")
    if spec.get("activation"):  # the base checkpoint's activation (the preset's otherwise)
        overrides.append(f"model.activation={spec['activation']}")
    cfg = mitigate.load_config(preset="default", overrides=overrides)
    if objective == "grpo":
        cfg.train.objective = {"name": "grpo"}
        cfg.train.kl_estimator = spec["grpo_kl_estimator"]
    elif objective == "sdsd":
        cfg.train.objective = {"name": "sdsd", "teacher": "live", "divergence": "reverse_kl",
                               "estimator": "full_vocab", "aggregation": "seq_mean"}
        if spec.get("sdsd_kl_coef") is not None:
            cfg.train.kl_coef = spec["sdsd_kl_coef"]
    return cfg


def setup_process(spec: dict, log: Path | None = None) -> None:
    """Same threads and fp32 matmul settings in every process; worker output to a log file."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_float32_matmul_precision("highest")  # fp32 on both sides, no TF32
    if spec["device"] == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def synchronizer(device: str):
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


class Gate:
    """Before each step: report the time since the last "go" (the previous step), wait for the next."""

    def __init__(self, conn, device: str):
        self.conn, self.sync, self.t = conn, synchronizer(device), None

    def __call__(self, diag: dict | None = None) -> None:
        self.sync()
        now = time.perf_counter()
        if self.t is None:
            import torch

            self.conn.send(("ready", {"threads": torch.get_num_threads(), "pid": os.getpid()}))
        else:
            self.conn.send(("step", now - self.t, diag or {}))
        if self.conn.recv() == "stop":
            raise StopBenchmark
        self.sync()
        self.t = time.perf_counter()


# ----------------------------------------------------------------------------- workers

def worker(conn, side: str, pair: str, spec: dict) -> None:
    setup_process(spec, Path(spec["workdir"]) / f"{side}_{pair}.log")
    try:
        (mitigate_worker if side == "mitigate" else trl_worker)(conn, pair, spec)
    except StopBenchmark:
        conn.send(("done", None))
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def mitigate_worker(conn, pair: str, spec: dict) -> None:
    import mitigate
    from mitigate.core import resume

    cfg = mitigate_config(spec, pair)
    gate, original = Gate(conn, spec["device"]), resume.fault_point

    def hook(where, step):
        if where == "train":
            # the train loop's locals still hold the previous step's rollouts: length and reward
            f = sys._getframe(1).f_locals
            diag = {}
            if "mask" in f and "correct" in f:
                diag = {"mean_completion_len": float(f["mask"].sum(1).float().mean()),
                        "reward": float(f["correct"].float().mean())}
                if "masked_prompts" in f.get("scalars", {}):
                    diag["distilled_share"] = 1.0 - float(f["scalars"]["masked_prompts"])
            gate(diag)
        original(where, step)

    resume.fault_point = hook
    out = Path(spec["workdir"]) / f"mitigate_{pair}"
    mitigate.train(cfg, spec["base"], out, overwrite=True, quiet=True)
    raise RuntimeError("mitigate.train returned before the driver stopped it")


def graph_tokenizer(task):
    """A word-level `PreTrainedTokenizerFast` over the graph task's vocabulary: one token per
    whitespace-separated name (`<bos>`, `n17`, ...), so text and token ids map one to one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mitigate.tasks.graph import SPECIALS

    vocab = {task.token_name(i): i for i in range(task.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   additional_special_tokens=list(SPECIALS[3:]))
    # Student prompt `<bos> s g <sep>`; SDPO's teacher prompt (content starting with <demo>)
    # `<demo> y* <sep> s g <sep>`: mitigate's `GraphTask.teacher_context`, token for token.
    fast.chat_template = ("{%- for m in messages -%}{%- if not m['content'].startswith('<demo>') -%}<bos> "
                          "{% endif -%}{{ m['content'] }} <sep>{%- endfor -%}")
    return fast


def trl_worker(conn, pair: str, spec: dict) -> None:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import GPT2LMHeadModel, TrainerCallback

    from mitigate.policies import resolve_checkpoint
    from mitigate.recipes.train import prompt_order
    from mitigate.tasks import make_task
    from mitigate.tasks.graph import PAD, Prompt

    cfg = mitigate_config(spec, pair)
    task = make_task(cfg.task)
    tokenizer = graph_tokenizer(task)
    T = task.max_new_tokens
    pool = task.prompts(task.train_split)
    order = prompt_order(len(pool), spec["train_steps"], spec["prompts"], cfg.seed).reshape(-1)
    rows = [pool[i] for i in order]

    def name(t):
        return task.token_name(t)

    if pair == "grpo":  # plain text prompts: no chat template on this side
        prompts = [f"{name(1)} {name(q.start)} {name(q.goal)} {name(3)}" for q in rows]
    else:  # SDPO builds its teacher prompt from the last user message
        prompts = [[{"role": "user", "content": f"{name(q.start)} {name(q.goal)}"}] for q in rows]
    data = Dataset.from_dict({"prompt": prompts, "start": [q.start for q in rows], "goal": [q.goal for q in rows]})
    expected = rows[0].tokens
    got = (tokenizer(text=prompts[0])["input_ids"] if pair == "grpo" else
           tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"])
    if list(got) != list(expected):
        raise RuntimeError(f"tokenizer gives {list(got)} for the prompt {expected}")

    def verifier_reward(prompts, completions, completion_ids, start, goal, **kw):
        comp = np.full((len(completion_ids), T), PAD, dtype=np.int64)
        for i, ids in enumerate(completion_ids):
            comp[i, :len(ids)] = ids[:T]
        correct, _ = task.verify([Prompt(s, g, task.train_split) for s, g in zip(start, goal)], comp)
        return [float(c) for c in correct]

    ckpt = str(resolve_checkpoint(spec["base"]))
    model = GPT2LMHeadModel.from_pretrained(ckpt, local_files_only=True, use_safetensors=True, dtype=torch.float32)
    tc = cfg.train
    common = dict(
        output_dir=str(Path(spec["workdir"]) / f"trl_{pair}"), use_cpu=spec["device"] == "cpu", bf16=False,
        fp16=False, gradient_checkpointing=False, seed=cfg.seed, data_seed=cfg.seed, max_steps=spec["train_steps"],
        per_device_train_batch_size=spec["prompts"] * spec["group"], gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=spec["group"], max_completion_length=T,
        temperature=tc.temperature, top_k=0, top_p=1.0, learning_rate=tc.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=tc.weight_decay, adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8,
        max_grad_norm=tc.grad_clip, scale_rewards="group", loss_type="dapo", shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    if pair == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**common, beta=tc.kl_coef, epsilon=tc.objective.clip_eps, num_iterations=1)
        trainer_cls = GRPOTrainer
    else:
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

        args = SDPOConfig(**common, beta=0.0, distillation_weight=1.0, distillation_mode="full_logits",
                          distillation_alpha=1.0, teacher_model_kind="live", use_successful_as_teacher=True,
                          success_reward_threshold=1.0, dont_reprompt_on_self_success=True,
                          include_environment_feedback=False, reprompt_template="{solution}{prompt}",
                          solution_template="<demo> {successful_previous_attempt} <sep> ")
        trainer_cls = SDPOTrainer

    gate = Gate(conn, spec["device"])

    class GateCallback(TrainerCallback):
        diag: dict = {}

        def on_step_begin(self, args, state, control, **kw):
            gate(self.diag)

        def on_step_end(self, args, state, control, **kw):
            m = trainer._metrics["train"]

            def last(k):
                return float(m[k][-1]) if m.get(k) else None

            self.diag = {"mean_completion_len": last("completions/mean_length"),
                         "reward": last("reward") if pair == "grpo" else last("self_distillation/reward_mean")}
            if pair == "sdsd":
                self.diag["distilled_share"] = last("self_distillation/reprompt_sample_fraction")

    trainer = trainer_cls(model=model, reward_funcs=[verifier_reward], args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[GateCallback()])
    torch.set_num_threads(spec["threads"])  # in case anything above changed it
    trainer.train()
    raise RuntimeError("TRL's trainer returned before the driver stopped it")


# ----------------------------------------------------------------------------- FLOPs and peak

def model_dims(ckpt) -> dict:
    from transformers import GPT2Config

    c = GPT2Config.from_pretrained(ckpt)
    d, l, V, n_pos = c.n_embd, c.n_layer, c.vocab_size, c.n_positions
    block = l * (12 * d * d + 13 * d)  # attention qkv + proj, MLP d->4d->d, biases, 2 layer norms
    return {"d": d, "layers": l, "heads": c.n_head, "vocab": V, "P_nonembedding": block + 2 * d, "n_positions": n_pos}


def forward_flops(m: dict, positions: range, logits: int) -> float:
    """One row: every position k in `positions` (k keys), plus `logits` output projections."""
    P, d, l, V = m["P_nonembedding"], m["d"], m["layers"], m["vocab"]
    return float(sum(2 * P + 4 * l * d * k for k in positions) + logits * 2 * d * V)


def step_flops(m: dict, prompts: int, group: int, c: int, T: int, teacher: bool, reference: bool) -> dict:
    B = prompts * group
    sampling = prompts * forward_flops(m, range(1, c), 0) + B * forward_flops(m, range(c, c + T), T)
    score = B * forward_flops(m, range(1, c + T), T)
    parts = {"sampling": sampling, "policy_fwd_bwd": 3 * score}
    if reference:
        parts["reference"] = score
    if teacher:
        c_t = T + 4  # <demo> y* (T-1 nodes) <sep> s g <sep>
        parts["teacher"] = B * forward_flops(m, range(1, c_t + T), T)
    parts["total"] = sum(parts.values())
    return parts


def matmul_rates(shapes, device: str, x_cache: dict) -> list[float]:
    """GFLOP/s of one timed batch of fp32 matmuls per shape (repeated to >= ~0.1 s)."""
    import torch

    sync = synchronizer(device)
    out = []
    for M, K, N in shapes:
        if (M, K, N) not in x_cache:
            x_cache[(M, K, N)] = (torch.randn(M, K, device=device), torch.randn(K, N, device=device), [1])
        a, b, reps = x_cache[(M, K, N)]
        while True:
            sync()
            t = time.perf_counter()
            for _ in range(reps[0]):
                torch.matmul(a, b)
            sync()
            dt = time.perf_counter() - t
            if dt >= 0.1 or reps[0] >= 1 << 16:
                break
            reps[0] *= 2
        out.append(2 * M * K * N * reps[0] / dt / 1e9)
    return out


# ----------------------------------------------------------------------------- driver

def recv(proc, conn, name: str, log: Path, timeout: float):
    t = time.time()
    while not conn.poll(1.0):
        if not proc.is_alive() or time.time() - t > timeout:
            tail = log.read_text()[-4000:] if log.exists() else ""
            sys.exit(f"worker '{name}' {'died' if not proc.is_alive() else 'timed out'}; log {log}:\n{tail}")
    msg = conn.recv()
    if msg[0] == "error":
        sys.exit(f"worker '{name}' failed (log {log}):\n{msg[1]}")
    return msg


def summary(times: list[float]) -> dict:
    return {"median_s": st.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS), help="comparisons to run")
    ap.add_argument("--warmup", type=int, default=2, help="steps per worker dropped before timing")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per worker")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every process")
    ap.add_argument("--width", type=int, default=128, help="model width (n_embd)")
    ap.add_argument("--layers", type=int, default=3, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (width must divide by it)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, help="learning rate of both sides (default: the preset's train.lr)")
    ap.add_argument("--beta", type=float, help="KL coefficient of both GRPOs (default: the preset's train.kl_coef)")
    ap.add_argument("--grpo-kl-estimator", choices=("k3", "full_vocab"), default="k3",
                    help="mitigate grpo's KL anchor: k3 (TRL's) or the preset's full_vocab")
    ap.add_argument("--sdsd-kl-coef", type=float,
                    help="mitigate sdsd's KL anchor coefficient (default: the preset's; SDPO has none)")
    ap.add_argument("--pretrain-steps", type=int, default=80, help="pretraining steps of the shared base model")
    ap.add_argument("--base", help="an existing base checkpoint or run folder of this shape (skips pretraining)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul-n", type=int, default=2048, help="N of the NxN fp32 peak matmul")
    ap.add_argument("--workdir", help="run folders and worker logs (default: a temporary folder, removed)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a worker may take for setup or one step")
    ap.add_argument("--out", default="benchmarks/results/trl_compare.json")
    a = ap.parse_args()
    if a.width % a.heads:
        ap.error(f"--width {a.width} must divide by --heads {a.heads}")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    for k, v in {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                 "WANDB_DISABLED": "true", "TRANSFORMERS_VERBOSITY": "error", "TRL_EXPERIMENTAL_SILENCE": "1"}.items():
        os.environ.setdefault(k, v)
    tmp = None
    if a.workdir:
        workdir = Path(a.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="trl_compare_")
        workdir = Path(tmp.name)
    spec = {"device": a.device, "threads": a.threads, "seed": a.seed, "width": a.width, "layers": a.layers,
            "heads": a.heads, "pretrain_steps": a.pretrain_steps, "train_steps": a.warmup + a.steps + 1,
            "prompts": a.prompts, "group": a.group, "temperature": a.temperature, "lr": a.lr, "beta": a.beta,
            "grpo_kl_estimator": a.grpo_kl_estimator, "sdsd_kl_coef": a.sdsd_kl_coef, "workdir": str(workdir)}
    setup_process(spec)
    import torch
    import transformers
    import trl

    import mitigate
    from mitigate import config as C
    from mitigate.policies import resolve_checkpoint
    from mitigate.tasks import make_task

    # ---- the shared base model
    if a.base:
        base = Path(a.base)
    else:
        print(f"pretraining the base model ({a.pretrain_steps} steps) in {workdir / 'base'} ...", flush=True)
        base = mitigate.pretrain(mitigate_config(spec), workdir / "base", overwrite=True, quiet=True)
    spec["base"] = str(Path(base).resolve())
    ckpt = resolve_checkpoint(base)
    # a base made before the default preset's switch to erf GELU (issue 28) keeps GPT-2's tanh GELU:
    # mitigate's config must name the checkpoint's activation, or training refuses the base
    spec["activation"] = json.loads((ckpt / "config.json").read_text()).get("activation_function")
    dims = model_dims(ckpt)
    if (dims["d"], dims["layers"]) != (a.width, a.layers):
        sys.exit(f"--base has width {dims['d']}, {dims['layers']} layers; asked for {a.width}, {a.layers}")
    cfg = mitigate_config(spec)
    task = make_task(cfg.task)
    c, T = len(task.prompts(task.train_split)[0].tokens), task.max_new_tokens
    cfgs = {p: mitigate_config(spec, p) for p in a.pairs}

    # ---- workers: one process each, all set up before the first timed step
    ctx = mp.get_context("spawn")
    workers = []
    for pair in a.pairs:
        for side in ("mitigate", "trl"):
            parent, child = ctx.Pipe()
            name = MITIGATE_NAME[pair] if side == "mitigate" else TRL_NAME[pair]
            proc = ctx.Process(target=worker, args=(child, side, pair, spec), daemon=True)
            proc.start()
            child.close()
            workers.append({"pair": pair, "side": side, "name": name, "proc": proc, "conn": parent,
                            "log": workdir / f"{side}_{pair}.log", "times": [], "diag": []})
    print(f"setting up {len(workers)} workers (logs in {workdir}) ...", flush=True)
    for w in workers:
        msg = recv(w["proc"], w["conn"], w["name"], w["log"], a.timeout)
        w["ready"] = msg[1]

    # ---- interleaved rounds: A, B, A, B, ... then the matmul peak
    shapes = [(a.matmul_n, a.matmul_n, a.matmul_n), (a.prompts * a.group * (c + T), a.width, 4 * a.width)]
    rates, cache = [], {}
    load = [os.getloadavg()[0]]
    rounds = a.warmup + a.steps
    t_start = time.time()
    for r in range(rounds):
        for w in workers:
            w["conn"].send("go")
            msg = recv(w["proc"], w["conn"], w["name"], w["log"], a.timeout)
            w["last"] = msg[1]
            if r >= a.warmup:
                w["times"].append(msg[1])
                w["diag"].append(msg[2])
        if r >= a.warmup:
            rates.append(matmul_rates(shapes, a.device, cache))
        line = "  ".join(f"{w['name']} {w['last']:.2f}s" for w in workers)
        print(f"round {r + 1}/{rounds}{' (warmup)' if r < a.warmup else ''}: {line}", flush=True)
    load.append(os.getloadavg()[0])
    for w in workers:
        w["conn"].send("stop")
        recv(w["proc"], w["conn"], w["name"], w["log"], a.timeout)
        w["proc"].join(timeout=60)

    # ---- summaries
    peak_by_shape = [st.median(x[i] for x in rates) for i in range(len(shapes))]
    peak = max(peak_by_shape)
    results = []
    for pair in a.pairs:
        m, t = (next(w for w in workers if w["pair"] == pair and w["side"] == s) for s in ("mitigate", "trl"))
        ref_m = pair == "grpo" or cfgs[pair].train.kl_coef > 0
        flops = {"mitigate": step_flops(dims, a.prompts, a.group, c, T, pair == "sdsd", ref_m),
                 "trl": step_flops(dims, a.prompts, a.group, c, T, pair == "sdsd", pair == "grpo")}
        sides = {}
        for side, w in (("mitigate", m), ("trl", t)):
            s = summary(w["times"])
            floor = flops[side]["total"] / (peak * 1e9)
            lens = [d["mean_completion_len"] for d in w["diag"] if d.get("mean_completion_len") is not None]
            rew = [d["reward"] for d in w["diag"] if d.get("reward") is not None]
            share = [d["distilled_share"] for d in w["diag"] if d.get("distilled_share") is not None]
            sides[side] = {"name": w["name"], **s, "times_s": w["times"], "flops": flops[side], "floor_s": floor,
                           "fraction_of_floor": floor / s["median_s"],
                           "mean_completion_len": st.mean(lens) if lens else None,
                           "mean_reward": st.mean(rew) if rew else None,
                           "distilled_share": st.mean(share) if share else None, "threads": w["ready"]["threads"]}
        per_round = [b / x for x, b in zip(m["times"], t["times"])]
        results.append({"comparison": pair, "mitigate": sides["mitigate"], "trl": sides["trl"],
                        "ratio": st.median(per_round), "ratio_min": min(per_round), "ratio_max": max(per_round),
                        "ratio_of_medians": sides["trl"]["median_s"] / sides["mitigate"]["median_s"],
                        "mitigate_config": {"objective": C.to_dict(cfgs[pair])["train"]["objective"],
                                            "kl_coef": cfgs[pair].train.kl_coef,
                                            "kl_estimator": cfgs[pair].train.kl_estimator}})

    # ---- table
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    print(f"\ntorch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}, {dev}, "
          f"threads {a.threads}, fp32; model d={dims['d']} l={dims['layers']} V={dims['vocab']}; "
          f"{a.prompts} prompts x {a.group} rollouts, {T} new tokens; {a.warmup} warmup + {a.steps} timed steps, "
          f"interleaved")
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s (NxN {a.matmul_n}: {peak_by_shape[0]:.1f}; MLP shape "
          f"{shapes[1][0]}x{shapes[1][1]}x{shapes[1][2]}: {peak_by_shape[1]:.1f})")
    head = (f"{'trainer':<17} {'median s':>9} {'min s':>7} {'max s':>7} {'GFLOP':>7} {'floor s':>8} "
            f"{'of floor':>8} {'len':>5} {'reward':>6} {'distil':>6}")
    print(head + "\n" + "-" * len(head))
    for res in results:
        for side in ("mitigate", "trl"):
            s = res[side]
            length = f"{s['mean_completion_len']:.2f}" if s["mean_completion_len"] is not None else "-"
            reward = f"{s['mean_reward']:.3f}" if s["mean_reward"] is not None else "-"
            share = f"{s['distilled_share']:.3f}" if s["distilled_share"] is not None else "-"
            print(f"{s['name']:<17} {s['median_s']:>9.3f} {s['min_s']:>7.3f} {s['max_s']:>7.3f} "
                  f"{s['flops']['total'] / 1e9:>7.2f} {s['floor_s']:>8.4f} {s['fraction_of_floor']:>8.1%} "
                  f"{length:>5} {reward:>6} {share:>6}")
        print(f"{'  TRL / mitigate':<17} {res['ratio']:>8.2f}x  per round {res['ratio_min']:.2f}.."
              f"{res['ratio_max']:.2f}, ratio of medians {res['ratio_of_medians']:.2f}x")
    if max(load) > (os.cpu_count() or 1) and a.device == "cpu":
        print(f"note: load average {max(load):.1f} on {os.cpu_count()} cores: other jobs shared the CPUs; "
              "the times are indicative only.")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
        "mitigate": mitigate.__version__, "device": a.device, "device_name": dev, "threads": a.threads,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_avg_1min": load,
        "wall_seconds_rounds": round(time.time() - t_start, 1), "warmup": a.warmup, "steps": a.steps,
        "prompts": a.prompts, "group": a.group, "prompt_len": c, "max_new_tokens": T,
        "temperature": a.temperature, "model": dims, "base": spec["base"] if a.base else None,
        "pretrain_steps": None if a.base else a.pretrain_steps,
        "peak_gflops": peak, "peak_gflops_by_shape": {f"{M}x{K}x{N}": p for (M, K, N), p in zip(shapes, peak_by_shape)},
        "matmul_rates_gflops": rates, "results": results}, indent=2))
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
