"""Sampler throughput: `mitigate.policies.tiny_gpt.sample` vs Hugging Face `model.generate`, and vs fp32 peak.

What is measured, all in one process so that load from other jobs hits every number alike:
  * sequences/s of `mitigate.policies.tiny_gpt.sample` and of `model.generate(do_sample=True, top_k=0,
    use_cache=True)` on the same model, the same batch of contexts (same lengths, same left
    padding), the same temperature and max_new_tokens. Both stop once every row has emitted EOS
    (generate through `eos_token_id`); the `steps` columns show how many tokens each ran.
  * the fp32 matmul peak of this machine: `torch.matmul` of two NxN fp32 matrices (2 N^3 FLOP).
Repetitions are interleaved (sampler, generate, matmul, then the reverse order next round) and
every reported figure is the median over rounds; `ratio` is the median of per-round ratios
t_generate / t_sampler, so a slow spell shared by both cancels. Read `ratio` > 1 as "the sampler
is that many times faster", and `of peak` as the share of the matmul peak the sampler achieves.

The batch mirrors how the package samples: each prompt repeated `--group` times (a GRPO group;
evaluation repeats every prompt `eval.samples` = 128 times); with 135 id_train prompts a batch
of 2048 holds at most 135 distinct contexts whatever `--group` is. The sampler runs a shared
prefix once and its rows share its KV cache; generate processes every row.
The model is the default preset: random init, so rollouts rarely hit EOS and both run all
max_new_tokens steps; `--checkpoint` benchmarks a trained model instead.

FLOP estimate of the sampler (work it executes, with P = non-embedding parameters, d = width,
V = vocab, l = layers): each processed position costs 2P (all matmuls in the blocks) plus
4*l*d*k for attention over k keys (QK^T and AV); every position that emits logits adds 2*d*V.
The sampler runs each distinct context once (causal: position k sees k keys; logits at the last
position only), then each decode step runs one position per distinct prefix (context and tokens
so far: rows that drew the same tokens share it), each with logits; the counts come from the
sampled tokens of the last timed call (`sampler_decode_rows`). The FLOP count is of the last
call; with a random model almost every prefix is distinct after the first token, so calls differ
little.
LayerNorm, GELU, softmax and sampling are not counted, so the figure is a lower bound.

    .venv/bin/python benchmarks/sampling.py                 # batch 2048, 3 rounds
    .venv/bin/python benchmarks/sampling.py --batches 256 2048 --repeats 5
    .venv/bin/python benchmarks/sampling.py --quick         # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics as st
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from mitigate.config import TrainConfig
from mitigate.policies import resolve_checkpoint
from mitigate.policies.tiny_gpt import TinyGPTConfig, build_model, left_pad, load_model, n_params, sample
from mitigate.tasks import make_task
from mitigate.tasks.graph import EOS, PAD, GraphParams


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def prefix_counts(contexts, tokens: torch.Tensor, steps: int) -> list[int]:
    """Rows the sampler runs at each decode step: the distinct (context, tokens so far) prefixes."""
    return [len({(tuple(c), tuple(tokens[i, :t].tolist())) for i, c in enumerate(contexts)})
            for t in range(1, steps)]


def sampler_flops(model, n_distinct: int, ctx_len: int, decode_rows: list[int]) -> float:
    c = model.config
    d, V, layers = c.n_embd, c.vocab_size, c.n_layer
    P = n_params(model) - V * d - c.n_positions * d  # wte (tied with lm_head) and wpe left out
    position = lambda k: 2 * P + 4 * layers * d * k  # noqa: E731
    prefill = n_distinct * (sum(position(k) for k in range(1, ctx_len + 1)) + 2 * d * V)
    decode = sum(n * (position(ctx_len + t) + 2 * d * V) for t, n in enumerate(decode_rows, start=1))
    return float(prefill + decode)


def bench_batch(model, contexts, T: int, temperature: float, repeats: int, x: torch.Tensor, bar) -> dict:
    """Interleaved rounds of sampler / generate / matmul on one batch; medians and ratios."""
    B, mm_n = len(contexts), x.shape[0]
    n_distinct, ctx_len = len({tuple(c) for c in contexts}), max(len(c) for c in contexts)
    ids, mask = left_pad(contexts, "cpu", PAD)
    gen = torch.Generator().manual_seed(0)
    run = {
        "sampler": lambda: sample(model, contexts, T, temperature, gen, batch_size=B),
        "generate": lambda: model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
            top_k=0, max_new_tokens=T, eos_token_id=EOS, pad_token_id=PAD, use_cache=True),
        "matmul": lambda: torch.matmul(x, x),
    }
    times = {k: [] for k in run}
    steps = {"sampler": [], "generate": []}
    with torch.inference_mode():
        for r in range(repeats + 1):  # round 0 is warm-up, not recorded
            for name in (list(run) if r % 2 else list(run)[::-1]):
                dt, out = timed(run[name])
                if r == 0:
                    continue
                times[name].append(dt)
                if name == "sampler":
                    steps[name].append(int(out.mask.sum(1).max()))
                    last_sample = out
                elif name == "generate":
                    steps[name].append(out.shape[1] - ids.shape[1])
            bar.update(1)
    t_s, t_g, t_m = (st.median(times[k]) for k in ("sampler", "generate", "matmul"))
    s_steps = max(steps["sampler"])
    decode_rows = prefix_counts(contexts, last_sample.tokens, s_steps)
    flops = sampler_flops(model, n_distinct, ctx_len, decode_rows)
    peak = 2 * mm_n ** 3 / t_m / 1e9
    achieved = st.median(flops / t for t in times["sampler"]) / 1e9
    return {
        "batch": B, "distinct_contexts": n_distinct, "context_len": ctx_len,
        "sampler_seq_per_s": B / t_s, "generate_seq_per_s": B / t_g,
        "ratio": st.median(g / s for g, s in zip(times["generate"], times["sampler"])),
        "sampler_steps": s_steps, "generate_steps": max(steps["generate"]),
        "sampler_decode_rows": decode_rows,
        "sampler_gflop_per_call": flops / 1e9, "sampler_gflops": achieved,
        "peak_gflops": peak, "fraction_of_peak": achieved / peak, "times_s": times,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2048, help="sequences per call (one batch)")
    ap.add_argument("--batches", type=int, nargs="+", help="several batch sizes, e.g. 256 2048")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per batch size")
    ap.add_argument("--group", type=int, default=TrainConfig().group_size, help="rows per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--matmul-n", type=int, default=2048, help="N of the NxN fp32 peak matmul")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--checkpoint", help="benchmark a trained checkpoint instead of a fresh init")
    ap.add_argument("--quick", action="store_true", help="batch 256, 2 rounds, 1024 matmul")
    ap.add_argument("--out", default="benchmarks/results/sampling.json")
    a = ap.parse_args()
    batches = [256] if a.quick else (a.batches or [a.batch])
    repeats, mm_n = (2, 1024) if a.quick else (a.repeats, a.matmul_n)
    if a.threads:
        torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    task = make_task(GraphParams())
    if a.checkpoint:
        model = load_model(resolve_checkpoint(a.checkpoint))
    else:
        model = build_model(TinyGPTConfig(), task.vocab)
    model.eval()
    prompts, T = task.prompts("id_train"), task.max_new_tokens
    x = torch.randn(mm_n, mm_n)

    load = [os.getloadavg()[0]]
    rows = []
    bar = tqdm(total=len(batches) * (repeats + 1), desc="sampling bench", unit="round")
    for B in batches:
        contexts = [prompts[(i // a.group) % len(prompts)].tokens for i in range(B)]
        rows.append(bench_batch(model, contexts, T, a.temperature, repeats, x, bar))
    bar.close()
    load.append(os.getloadavg()[0])

    threads = torch.get_num_threads()
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, threads {threads}, "
          f"fp32 peak = median of {repeats} matmuls {mm_n}x{mm_n}, {repeats} interleaved rounds")
    head = f"{'batch':>6} {'sampler seq/s':>14} {'generate seq/s':>15} {'ratio':>6} {'steps s/g':>9} " \
           f"{'sampler GFLOP/s':>15} {'peak GFLOP/s':>13} {'of peak':>8}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['batch']:>6} {r['sampler_seq_per_s']:>14.0f} {r['generate_seq_per_s']:>15.0f} "
              f"{r['ratio']:>5.2f}x {r['sampler_steps']:>4}/{r['generate_steps']:<4} "
              f"{r['sampler_gflops']:>15.1f} {r['peak_gflops']:>13.1f} {r['fraction_of_peak']:>8.1%}")
    if max(load) > (os.cpu_count() or 1):
        print(f"note: load average {max(load):.1f} on {os.cpu_count()} cores: other jobs share the CPUs."
              + (f" With {threads} threads every parallel op waits for descheduled threads, so op count"
                 " rather than FLOPs sets the times; compare with --threads 1." if threads > 1 else ""))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": threads,
        "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_avg_1min": load,
        "repeats": repeats, "matmul_n": mm_n, "group": a.group, "temperature": a.temperature,
        "max_new_tokens": T, "checkpoint": a.checkpoint,
        "model": {k: getattr(model.config, k) for k in ("n_embd", "n_layer", "n_head", "vocab_size")},
        "n_params": n_params(model), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
