"""Seventh session, call 3: decode paged attention with its programs started longest context first (``seq_order``)
vs in batch order, on the H100 (bf16, Qwen3-0.6B heads, block 16, unsplit decode launches as the CUDA graphs of
33+ sequences make them). CUDA graph of 20 calls, median of 5 replays; % of the 3.35 TB/s roof for the K/V bytes.
Usage: python attn_lpt.py  (from the repository root, PYTHONPATH=src)
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
    cases = [(f"B={b} ctx~U[200,2000]", [rng.randint(200, 2000) for _ in range(b)]) for b in (48, 64, 96, 128, 192, 256)]
    # nano-vllm workload mid-run: prompt U[100,1024] plus the tokens generated so far
    for b, t in ((256, 100), (192, 350), (128, 600), (64, 850), (48, 900)):
        cases.append((f"B={b} ctx~U[100,1024]+{t}", [rng.randint(100, 1024) + t for _ in range(b)]))
    print(f"{torch.cuda.get_device_name()}, launch order A/B (unsplit decode, max_seq_len 4096)", flush=True)
    for name, lens in cases:
        inputs = build_inputs(lens, torch.bfloat16, "cuda", cpu_gen, dev_gen, 4096)
        kv_bytes = sum(lens) * 8 * 128 * 2 * 2
        order = sorted(range(len(lens)), key=lambda i: -lens[i])
        row = []
        for label, seq_order in (("batch order", None), ("longest first", order)):
            inputs["seq_order"] = None if seq_order is None else torch.tensor(seq_order, dtype=torch.int32, device="cuda")
            us = time_us(inputs)
            row.append(f"{label}: {us:8.2f} us {kv_bytes / (us * 1e-6) / 3.35e12 * 100:5.1f}%")
        print(f"{name:28s} " + " | ".join(row), flush=True)
        del inputs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
