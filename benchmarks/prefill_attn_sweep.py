"""Prefill paged-attention tuning sweep: ``triton_attention.paged_attention`` launch configs on the mixed batches of
the throughput workload's prefill phase (Qwen3-0.6B shape).

    python benchmarks/prefill_attn_sweep.py [--decodes 0 128] [--output-json F]

Shape: 16 query heads, 8 KV heads, head_dim 128, block_size 16, bf16. A case is one engine step of the nano-vllm
workload's prefill phase: whole prompts of U[100, 1024] tokens filling an 8,192-token budget (the last one cut, its
earlier part cached, as chunked prefill leaves it), plus ``--decodes`` decode sequences of U[200, 1100] cached
tokens; blocks are handed out in a shuffled order. Configs: the default (``_launch_config`` as shipped), then
``_launch_config`` monkeypatched to each block_m x tile_n x num_warps x num_stages of the grid (no split: the batch
has prefill tokens). Each config's output is compared with the default's (max abs diff <= 2e-2); a config that fails
to compile is reported and skipped. Timing: eager calls between CUDA events (the prefill path runs eagerly), median
of 5 groups of 10 calls after a warm-up, in us per call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
from typing import Any

import torch

from inferd.kernels import triton_attention

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 16, 8, 128, 16


def build_case(decodes: int, seed: int, budget: int = 8192) -> dict[str, Any]:
    rng = random.Random(seed)
    query_lens, seq_lens = [], []
    for _ in range(decodes):
        query_lens.append(1)
        seq_lens.append(rng.randint(200, 1100))
    left = budget - decodes
    while left > 0:
        prompt = rng.randint(100, 1024)
        q = min(prompt, left)
        query_lens.append(q)
        seq_lens.append(
            prompt if q == prompt else q + rng.randint(0, 512)
        )  # a cut prompt has a cached prefix
        left -= q
    blocks = [math.ceil(s / BLOCK_SIZE) for s in seq_lens]
    perm = torch.randperm(sum(blocks), generator=torch.Generator().manual_seed(seed)).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
    start = 0
    for b, n in enumerate(blocks):
        table[b, :n] = perm[start : start + n]
        start += n
    num_tokens = sum(query_lens)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (sum(blocks), BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    loc = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32)
    return {
        "query": torch.randn(
            num_tokens, NUM_HEADS, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16
        ),
        "k_cache": torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16),
        "v_cache": torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16),
        "block_tables": table.cuda(),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        "query_start_loc": loc.cuda(),
        "max_query_len": max(query_lens),
        "max_seq_len": max(seq_lens),
        "scale": HEAD_DIM**-0.5,
        "_flops": sum(
            4 * NUM_HEADS * HEAD_DIM * (q * (s - q) + q * (q + 1) / 2)
            for q, s in zip(query_lens, seq_lens, strict=True)
        ),
        "_desc": f"{len(seq_lens) - decodes} prompts ({num_tokens - decodes} tokens) + {decodes} decodes",
    }


def time_us(args: dict[str, Any]) -> float:
    def run() -> None:
        for _ in range(10):
            triton_attention.paged_attention(**args)

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        e.synchronize()
        times.append(1e3 * s.elapsed_time(e) / 10)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--decodes", type=int, nargs="+", default=[0, 128])
    p.add_argument("--block-m", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--tile-n", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--num-warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--num-stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    original = triton_attention._launch_config
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "cases": []}
    for decodes in args.decodes:
        case = build_case(decodes, seed=decodes)
        call = {k: v for k, v in case.items() if not k.startswith("_")}
        default_cfg = original(
            call["query"], NUM_KV_HEADS, call["seq_lens"].shape[0], HEAD_DIM, call["max_query_len"], 4096
        )
        ref = triton_attention.paged_attention(**call)
        rows = []
        grid = itertools.product(args.block_m, args.tile_n, args.num_warps, args.num_stages)
        for cfg in [
            default_cfg,
            *(default_cfg._replace(block_m=m, tile_n=t, num_warps=w, num_stages=s) for m, t, w, s in grid),
        ]:
            label = f"m{cfg.block_m} tn{cfg.tile_n} w{cfg.num_warps} st{cfg.num_stages}"
            triton_attention._launch_config = lambda *a, _cfg=cfg, **k: _cfg
            try:
                out = triton_attention.paged_attention(**call)
                torch.cuda.synchronize()
                diff = (out.float() - ref.float()).abs().max().item()
                us = time_us(call)
                row = {"config": label, "us": round(us, 1), "tflops": round(case["_flops"] / us / 1e6, 1)}
                row["status"] = "ok" if diff <= 2e-2 else f"mismatch {diff:.3g}"
            except Exception as exc:  # e.g. shared memory exceeded
                row = {"config": label, "status": f"error {type(exc).__name__}: {str(exc)[:120]}"}
            finally:
                triton_attention._launch_config = original
            rows.append(row)
        rows_ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["us"])
        print(f"== {case['_desc']}; default {rows[0].get('config')} {rows[0].get('us')} us", flush=True)
        for r in rows_ok[:8]:
            print(f"   {r['config']:<24} {r['us']:>8} us {r['tflops']:>7} TFLOP/s")
        report["cases"].append({"desc": case["_desc"], "default": rows[0], "rows": rows})
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
