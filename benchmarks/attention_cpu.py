"""The CPU route's attention for one bucket of rows, its two kernels side by side: forward and
backward of `packed.short_attention` (three batched matmuls) against the fused
`scaled_dot_product_attention`, at each bucket width.

    python benchmarks/attention_cpu.py                       # widths 16..256, 1 and 2 threads
    python benchmarks/attention_cpu.py --threads 2 --widths 64,96,128 --repeats 21
    python benchmarks/attention_cpu.py --heads 4 --kv-heads 2 --head-dim 24   # another shape
    python benchmarks/attention_cpu.py --fused-only --threads 1 --head-dim 24 --widths 128,512,2048 \
        --tokens 32768 --repeats 3      # the scaling benchmark's tiny model at group 16: long rows
    python benchmarks/attention_cpu.py --decode 16 --threads 1 --head-dim 24 --widths 128,1024,2048
                                    # its decode steps: the engine's attention over the KV cache

`bucketed_attention` (pillion/model/packed.py) takes the short route for float32 buckets up to
`SHORT_ROWS` tokens wide and the fused kernel above; this prints the figures that width rests
on (the kernels alone: a model's forward adds the gathers around them, see SHORT_ROWS's note).
The default shape is the shipped model's (4 query heads, 2 KV heads, head_dim 32), and each
bucket holds about `--tokens` tokens (rows = tokens // width), as the README job's buckets do.
Per width and thread count, both kernels run on the same q, k, v (their outputs and gradients
are checked equal first, to 1e-5), after two warm-up rounds, alternating within every repeat
so that a slow moment of a shared machine hits both. Printed: the median milliseconds of each
(forward + backward), the ratio fused / short (above 1: the short route is faster) and the
route pillion takes there, with the load average beside the table (other work on the machine
skews every figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pillion.model.decode import decode_attention
from pillion.model.packed import SHORT_ROWS, fused_attention, short_attention


def inputs(rows: int, width: int, heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    """q [rows, width, H, D], k and v [rows, width, KV, D] (requiring grad) and an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, width, heads, head_dim, generator=g).requires_grad_()
    k = torch.randn(rows, width, kv_heads, head_dim, generator=g).requires_grad_()
    v = torch.randn(rows, width, kv_heads, head_dim, generator=g).requires_grad_()
    grad = torch.randn(rows * width, heads, head_dim, generator=g)
    return q, k, v, grad


def forward_backward(fn, q, k, v, grad):
    """Output and q, k, v gradients of one forward + backward."""
    for x in (q, k, v):
        x.grad = None
    out = fn(q, k, v)
    out.backward(grad)
    return out.detach(), [x.grad for x in (q, k, v)]


def compare(width: int, tokens: int, threads: int, repeats: int, heads: int = 4, kv_heads: int = 2,
            head_dim: int = 32, fused_only: bool = False) -> dict:
    """Median seconds of forward + backward through each kernel at one width and thread count,
    after checking that both give the same output and gradients (fused_only: the fused kernel
    alone, for rows too wide for the short route's scores)."""
    torch.set_num_threads(threads)
    q, k, v, grad = inputs(max(1, tokens // width), width, heads, kv_heads, head_dim)
    kernels = (("fused", fused_attention),) if fused_only else (("short", short_attention), ("fused", fused_attention))
    if not fused_only:
        out_s, grads_s = forward_backward(short_attention, q, k, v, grad)
        out_f, grads_f = forward_backward(fused_attention, q, k, v, grad)
        for name, a, b in zip(("output", "q grad", "k grad", "v grad"), (out_s, *grads_s), (out_f, *grads_f)):
            if not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
                raise AssertionError(f"width {width}: short and fused {name} differ by {(a - b).abs().max():.2e}")
    times = {name: [] for name, _ in kernels}
    for i in range(-2, repeats):  # two warm-up rounds (the allocator's first pages), not counted
        for name, fn in kernels if i % 2 == 0 else kernels[::-1]:
            start = time.perf_counter()
            forward_backward(fn, q, k, v, grad)
            if i >= 0:
                times[name].append(time.perf_counter() - start)
    fused_s = statistics.median(times["fused"])
    short = statistics.median(times["short"]) if "short" in times else float("nan")
    return {"width": width, "rows": q.shape[0], "threads": threads, "short": short, "fused": fused_s,
            "ratio": fused_s / short, "tokens": q.shape[0] * width}


def decode_time(rows: int, span: int, threads: int, repeats: int, heads: int = 4, kv_heads: int = 2,
                head_dim: int = 32) -> float:
    """Median seconds of one decode step's attention in one layer (`decode.decode_attention`, as the
    engine calls it): `rows` rows, one new token each, over `span` cached columns read through views
    of a cache laid out as `KVCache`'s (keys transposed, 8 spare columns)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(span)
    keys = torch.randn(rows, kv_heads, head_dim, span + 8, generator=g)[..., :span]
    values = torch.randn(rows, kv_heads, span + 8, head_dim, generator=g)[:, :, :span]
    q = torch.randn(rows * kv_heads, heads // kv_heads, head_dim, generator=g)
    bias = torch.zeros(rows * kv_heads, 1, span)
    times = []
    for i in range(-2, repeats):
        start = time.perf_counter()
        decode_attention(q, keys.reshape(rows * kv_heads, head_dim, span),
                         values.reshape(rows * kv_heads, span, head_dim), bias)
        if i >= 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,32,64,96,128,192,256", help="comma-separated bucket widths (tokens)")
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--tokens", type=int, default=6144, help="tokens per bucket (rows = tokens // width)")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--decode", type=int, default=0, metavar="ROWS",
                   help="instead: the engine's decode attention of ROWS rows, one layer, over spans --widths")
    p.add_argument("--fused-only", action="store_true",
                   help="time the fused kernel alone (rows too wide for the short route's [rows, L, L] scores)")
    args = p.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.decode:
        print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; decode attention of "
              f"{args.decode} rows, heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim}, one layer, float32")
        print(f"{'threads':>7} {'span':>5} {'ms a step':>9} {'us a row':>9}")
        for t in threads:
            for w in widths:
                seconds = decode_time(args.decode, w, t, args.repeats, args.heads, args.kv_heads, args.head_dim)
                print(f"{t:>7} {w:>5} {seconds * 1e3:>9.3f} {seconds / args.decode * 1e6:>9.2f}", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        return
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; heads {args.heads}/"
          f"{args.kv_heads}, head_dim {args.head_dim}, ~{args.tokens} tokens a bucket, float32; "
          f"SHORT_ROWS = {SHORT_ROWS}", flush=True)
    print(f"{'threads':>7} {'width':>5} {'rows':>5} {'short ms':>9} {'fused ms':>9} {'fused us/token':>14} "
          f"{'fused/short':>11}  route")
    for t in threads:
        for w in widths:
            r = compare(w, args.tokens, t, args.repeats, args.heads, args.kv_heads, args.head_dim, args.fused_only)
            route = "short" if w <= SHORT_ROWS else "fused"
            short = "-" if args.fused_only else f"{r['short'] * 1e3:.2f}"
            ratio = "-" if args.fused_only else f"{r['ratio']:.2f}x"
            print(f"{t:>7} {w:>5} {r['rows']:>5} {short:>9} {r['fused'] * 1e3:>9.2f} "
                  f"{r['fused'] / r['tokens'] * 1e6:>14.2f} {ratio:>11}  {route}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
