"""Seventh session, call 1: decode paged attention, launch order and short-context split, on the H100.

For each case: ``triton_attention.paged_attention`` timed in a CUDA graph of 20 calls (median of 5 replays), with
``DECODE_HEADS_FIRST`` off / on (unsplit decode launches: a sequence's KV heads neighbouring programs or not), and
for short contexts with ``max_seq_len`` 4096 (the long-context graph: split + merge) vs 256 (unsplit).
Usage: python attn_order.py  (from the repository root, PYTHONPATH=src)
"""

from __future__ import annotations

import random
import statistics
import sys

import torch

sys.path.insert(0, "benchmarks")
from attn_sweep import build_inputs  # noqa: E402

from inferd.kernels import triton_attention  # noqa: E402


def time_us(inputs: dict, calls: int = 20) -> float:
    fn = lambda: triton_attention.paged_attention(**inputs)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(6):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / calls)
    return statistics.median(times[1:])


def main() -> None:
    dev_gen = torch.Generator(device="cuda").manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    cases = []
    for b in (32, 64, 96, 128, 192, 256):
        cases.append((f"B={b} ctx~U[200,2000]", [rng.randint(200, 2000) for _ in range(b)]))
    for b in (64, 128, 256):
        cases.append((f"B={b} ctx=512", [512] * b))
        cases.append((f"B={b} ctx~U[300,1500]", [rng.randint(300, 1500) for _ in range(b)]))
    print(f"{torch.cuda.get_device_name()}, heads-first A/B (unsplit decode, max_seq_len 4096)", flush=True)
    for name, lens in cases:
        inputs = build_inputs(lens, torch.bfloat16, "cuda", cpu_gen, dev_gen, 4096)
        kv_bytes = sum(lens) * 8 * 128 * 2 * 2
        row = []
        for hf in (False, True):
            triton_attention.DECODE_HEADS_FIRST = hf
            us = time_us(inputs)
            row.append(f"heads_first={hf}: {us:8.2f} us {kv_bytes / us / 1e6 / 3350 * 100:5.1f}% roof")
        print(f"{name:24s} " + " | ".join(row), flush=True)
        del inputs
        torch.cuda.empty_cache()
    triton_attention.DECODE_HEADS_FIRST = True
    print("short contexts: split bound 4096 (split + merge) vs 256 (unsplit)", flush=True)
    for b in (1, 2, 4, 8, 16, 32):
        for ctx in (64, 160, 256):
            lens = [ctx] * b
            row = []
            for bound in (4096, 256):
                inputs = build_inputs(lens, torch.bfloat16, "cuda", cpu_gen, dev_gen, bound)
                row.append(f"bound {bound}: {time_us(inputs):6.2f} us")
            print(f"B={b:<3d} ctx={ctx:<4d} " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
