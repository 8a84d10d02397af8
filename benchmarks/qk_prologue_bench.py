"""GPU micro-benchmark: ``triton_fused.qk_norm_rope_store`` (the fused attention prologue) through its two launches,
one program per (token, head) and tiled, at Qwen3-0.6B shapes (16 query / 8 KV heads, head_dim 128, bf16).

    python benchmarks/qk_prologue_bench.py [--tokens 1 8 64 128 256 2048 8192] [--tile-elems 4096]
        [--block-size 16] [--calls 20] [--replays 50] [--eager]

Each launch is forced through ``triton_fused.TILED_MIN_TOKENS`` (``--tile-elems``: one tiled column per
``_TILE_ELEMS`` value). Timed as a decode step runs it: ``--calls`` calls captured in one CUDA graph, replayed
``--replays`` times (CUDA events, after a warm-up replay); the median replay over ``--calls`` is the time per call
(``--eager``: ``--calls`` plain calls between two events instead, host launch cost included). Random positions and
distinct random cache slots (no padding). GB/s = bytes moved (qkv read, q/k/v written, the tokens' float32 cos/sin
rows read) / time. ``*`` marks the launch ``qk_norm_rope_store`` picks at that token count. ``diff`` compares each
tiled launch with the per-head one (q and both caches): the fraction of elements that differ and the largest
difference (the two launches may sum the squares of the RMSNorm in another order: a rare one-ulp difference);
``err`` is the per-head launch's relative error against ``reference.qk_norm_rope_store``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial

import torch

from inferd.kernels import reference, triton_fused
from inferd.layers.rotary_embedding import compute_cos_sin_cache

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, MAX_POS, EPS = 16, 8, 128, 40960, 1e-6  # Qwen3-0.6B
DTYPE = torch.bfloat16
PER_HEAD = 1 << 62  # TILED_MIN_TOKENS forcing the per-(token, head) launch


def make_inputs(num_tokens: int, block_size: int) -> dict:
    dev = "cuda"
    num_blocks = -(-2 * num_tokens // block_size) + 1
    cache = torch.randn(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device=dev)
    width = (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM
    rope = {"rope_type": "default", "rope_theta": 1e6}
    return {
        "qkv": 2 * torch.randn(num_tokens, width, dtype=DTYPE, device=dev),
        "positions": torch.randint(0, MAX_POS, (num_tokens,), device=dev),
        "cos_sin_cache": compute_cos_sin_cache(MAX_POS, HEAD_DIM, rope).to(dev),
        "q_norm_weight": (1 + 0.2 * torch.randn(HEAD_DIM, device=dev)).to(DTYPE),
        "k_norm_weight": (1 + 0.2 * torch.randn(HEAD_DIM, device=dev)).to(DTYPE),
        "eps": EPS,
        "k_cache": cache,
        "v_cache": cache.clone(),
        "slot_mapping": torch.randperm(num_blocks * block_size, device=dev)[:num_tokens],
        "num_heads": NUM_HEADS,
        "num_kv_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
    }


def moved_bytes(num_tokens: int) -> int:
    elem = DTYPE.itemsize
    qkv = num_tokens * (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM * elem
    return 2 * qkv + num_tokens * HEAD_DIM * 4  # read qkv, write q/k/v (as many bytes), cos/sin rows


def time_us(fn: Callable[[], object], calls: int, replays: int, eager: bool) -> float:
    """Median microseconds per call over ``replays`` runs of ``calls`` calls (a CUDA graph unless ``eager``)."""
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    if eager:
        run = lambda: [fn() for _ in range(calls)]  # noqa: E731
    else:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        run = graph.replay
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times) * 1e3 / calls


def run_launch(a: dict, min_tokens: int, tile_elems: int) -> tuple[torch.Tensor, ...]:
    """q and fresh caches written by one call through the given launch."""
    triton_fused.TILED_MIN_TOKENS, triton_fused._TILE_ELEMS = min_tokens, tile_elems
    args = {**a, "k_cache": a["k_cache"].clone(), "v_cache": a["v_cache"].clone()}
    return triton_fused.qk_norm_rope_store(**args), args["k_cache"], args["v_cache"]


def diff(x: tuple[torch.Tensor, ...], y: tuple[torch.Tensor, ...]) -> str:
    differ = sum((a != b).sum().item() for a, b in zip(x, y, strict=True))
    total = sum(a.numel() for a in x)
    largest = max((a.float() - b.float()).abs().max().item() for a, b in zip(x, y, strict=True))
    return f"{differ / total:.1e}/{largest:.0e}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 128, 256, 2048, 8192])
    parser.add_argument("--tile-elems", type=int, nargs="+", default=[triton_fused._TILE_ELEMS])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--eager", action="store_true")
    args = parser.parse_args()
    default_min, default_elems = triton_fused.TILED_MIN_TOKENS, triton_fused._TILE_ELEMS
    print(torch.cuda.get_device_name(), f"TILED_MIN_TOKENS={default_min} _TILE_ELEMS={default_elems}")
    header = f"{'tokens':>7} {'per-head us':>14} {'GB/s':>6}"
    for e in args.tile_elems:
        header += f" {f'tiled/{e} us':>14} {'GB/s':>6} {'diff':>13}"
    print(header + f" {'err':>8}")
    for t in args.tokens:
        a = make_inputs(t, args.block_size)
        nbytes = moved_bytes(t)
        cases = [(PER_HEAD, default_elems)] + [(0, e) for e in args.tile_elems]
        outs = [run_launch(a, m, e) for m, e in cases]
        ref_args = {**a, "k_cache": a["k_cache"].clone(), "v_cache": a["v_cache"].clone()}
        ref = (reference.qk_norm_rope_store(**ref_args), ref_args["k_cache"], ref_args["v_cache"])
        err = max(
            ((o.double() - r.double()).norm() / r.double().norm()).item()
            for o, r in zip(outs[0], ref, strict=True)
        )
        line = f"{t:>7}"
        for i, (m, e) in enumerate(cases):
            triton_fused.TILED_MIN_TOKENS, triton_fused._TILE_ELEMS = m, e
            us = time_us(partial(triton_fused.qk_norm_rope_store, **a), args.calls, args.replays, args.eager)
            picked = (t >= default_min) == (m == 0) and (m != 0 or e == default_elems)
            line += f" {us:>13.1f}{'*' if picked else ' '} {nbytes / us * 1e-3:>6.0f}"
            if i:
                line += f" {diff(outs[0], outs[i]):>13}"
        print(line + f" {err:>8.1e}", flush=True)
        triton_fused.TILED_MIN_TOKENS, triton_fused._TILE_ELEMS = default_min, default_elems


if __name__ == "__main__":
    main()
