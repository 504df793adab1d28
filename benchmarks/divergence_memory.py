"""Peak memory of the per-token full-vocabulary divergence: chunked (and top-k with a tail bucket)
against the naive [N, V] path, at a real vocabulary size.

What is measured: one forward and backward of `sum_t D(p_student,t || p_teacher,t)` over N
completion positions, from last hidden states [N, H] and an output projection [V, H] (a live
self-distillation teacher: the student's own weight, under no-grad), for

    naive         mitigate.policies.chunked.naive_divergence      all N x V logits at once
    checkpointed  the naive function on `--chunks` positions at a time, each chunk under
                  torch.utils.checkpoint (defined here, for comparison only)
    chunked       mitigate.policies.chunked.chunked_divergence    `--chunks` positions at a time, the
                  projection's gradients applied by hand (the library's path)
    topk_tail     mitigate.policies.chunked.divergence(..., "topk_tail")   teacher's top-k + tail bucket

Each method runs in a fresh Python process. The figure (`peak`) is the highest total of live
tensor bytes allocated between the start of the forward and the end of the backward, from the
allocation and free events that `torch.profiler` records with `profile_memory=True`: the CPU
counterpart of `torch.cuda.max_memory_allocated`. It includes the weight's gradient [V, H], which
every method allocates; `peak - grad` leaves it out. `ratio` = peak(method) / peak(naive). The
process's peak resident set size (`resource.getrusage`, ru_maxrss, minus its value before the
forward; glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the resident set) is
printed beside it; it also counts BLAS scratch buffers and allocator slack. `seconds` is the
unprofiled forward + backward.

    .venv/bin/python benchmarks/divergence_memory.py                  # V = 151,936, N = 1024, H = 896
    .venv/bin/python benchmarks/divergence_memory.py --quick          # V = 32,000, N = 256: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("naive", "checkpointed", "chunked", "topk_tail")
# glibc serves large blocks from mmap and returns them on free, but raises that threshold up to 32 MiB
# after the first free, keeping later blocks below it in its heap; fixing it at 64 KiB makes the
# resident set follow the live tensors, so ru_maxrss is their high-water mark.
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
HERE = Path(__file__).resolve().parent


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def checkpointed(student_h, teacher_h, weight, kind, chunk):
    """Each chunk of the naive function under torch.utils.checkpoint: no logits kept between the
    forward and the backward, but every chunk's backward makes its own [V, H] weight gradient."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from mitigate.policies.chunked import naive_divergence

    return torch.cat([checkpoint(naive_divergence, student_h[lo:lo + chunk], teacher_h[lo:lo + chunk], weight,
                                 weight.detach(), kind, use_reentrant=False)
                      for lo in range(0, len(student_h), chunk)])


def run_one(method: str, vocab: int, positions: int, hidden: int, chunk: int, topk: int, kind: str) -> dict:
    """One method in this process: build inputs, then time and measure forward + backward."""
    import torch

    from mitigate.policies.chunked import divergence, naive_divergence

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    g = torch.Generator().manual_seed(0)
    small = torch.randn(4, 8, requires_grad=True)  # warm up autograd outside the measured region
    naive_divergence(small, small.detach(), small, small.detach()).sum().backward()
    student_h = torch.randn(positions, hidden, generator=g).requires_grad_(True)
    teacher_h = torch.randn(positions, hidden, generator=g)
    weight = torch.randn(vocab, hidden, generator=g).div_(hidden**0.5).requires_grad_(True)  # in place: no copy

    def step():
        if method == "naive":
            d = naive_divergence(student_h, teacher_h, weight, weight, kind)
        elif method == "checkpointed":
            d = checkpointed(student_h, teacher_h, weight, kind, chunk)
        else:
            approximation = "full" if method == "chunked" else "topk_tail"
            d = divergence(student_h, teacher_h, weight, weight, kind, approximation, chunk, topk)
        d.sum().backward()
        return float(d.detach().sum())

    before = peak_rss_bytes()
    t0 = time.perf_counter()
    value = step()
    seconds = time.perf_counter() - t0
    rss = peak_rss_bytes() - before
    weight.grad = student_h.grad = None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return {"method": method, "peak_bytes": tensor_peak(prof), "rss_peak_bytes": rss, "seconds": round(seconds, 2),
            "value": value}


def tensor_peak(prof) -> int:
    """Highest total of live tensor bytes allocated inside the profiled region (allocation and free
    events of PyTorch's allocator, in time order); excludes BLAS scratch buffers."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=151_936, help="V (Qwen2.5's vocabulary: 151,936)")
    ap.add_argument("--positions", type=int, default=1024, help="N completion tokens in the batch")
    ap.add_argument("--hidden", type=int, default=896, help="H (Qwen2.5-0.5B: 896)")
    ap.add_argument("--chunks", default="256,64", help="positions per chunk (comma-separated: one chunked row each)")
    ap.add_argument("--topk", type=int, default=64, help="k of the topk_tail approximation")
    ap.add_argument("--kind", default="reverse_kl", choices=("reverse_kl", "forward_kl", "jsd"))
    ap.add_argument("--quick", action="store_true", help="V = 32,000, N = 256 (a smoke run)")
    ap.add_argument("--out", default=str(HERE / "results" / "divergence_memory.json"))
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one method, print JSON
    ap.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)  # internal: with --one
    a = ap.parse_args()
    if a.quick:
        a.vocab, a.positions = 32_000, 256
    if a.one:
        print(json.dumps(run_one(a.one, a.vocab, a.positions, a.hidden, a.chunk, a.topk, a.kind)))
        return
    chunks = [int(c) for c in a.chunks.split(",")]
    jobs = [("naive", chunks[0]), ("checkpointed", chunks[0]), *(("chunked", c) for c in chunks),
            ("topk_tail", chunks[0])]
    rows = []
    for method, chunk in jobs:
        cmd = [sys.executable, __file__, "--one", method, "--vocab", str(a.vocab), "--positions", str(a.positions),
               "--hidden", str(a.hidden), "--chunk", str(chunk), "--topk", str(a.topk), "--kind", a.kind]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV)
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "chunk": None if method == "naive" else chunk})
    one_nv, grad = 4 * a.positions * a.vocab, 4 * a.vocab * a.hidden
    naive = rows[0]["peak_bytes"]
    print(f"V={a.vocab:,}  N={a.positions}  H={a.hidden}  k={a.topk}  {a.kind}  (one fp32 [N, V] = "
          f"{one_nv / 2**20:,.0f} MiB; the weight gradient [V, H], which every method allocates, = "
          f"{grad / 2**20:,.0f} MiB)")
    print(f"{'method':<12} {'chunk':>5} {'peak MiB':>9} {'ratio':>6} {'peak - grad':>12} {'ratio':>6} "
          f"{'RSS MiB':>8} {'seconds':>8}")
    for r in rows:
        r["ratio"] = round(r["peak_bytes"] / naive, 3)
        r["ratio_excluding_weight_grad"] = round((r["peak_bytes"] - grad) / (naive - grad), 3)
        print(f"{r['method']:<12} {r['chunk'] or '-':>5} {r['peak_bytes'] / 2**20:>9,.0f} {r['ratio']:>6.3f} "
              f"{(r['peak_bytes'] - grad) / 2**20:>12,.0f} {r['ratio_excluding_weight_grad']:>6.3f} "
              f"{r['rss_peak_bytes'] / 2**20:>8,.0f} {r['seconds']:>8.2f}")
    result = {"vocab": a.vocab, "positions": a.positions, "hidden": a.hidden, "chunks": chunks, "topk": a.topk,
              "kind": a.kind, "fp32_NxV_bytes": one_nv, "machine": platform.platform(), "cpus": os.cpu_count(),
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
