"""Decode paged-attention tuning sweep: ``triton_attention.paged_attention`` launch configs at Qwen3-0.6B shapes.

    python benchmarks/attn_sweep.py --output-json attn_sweep.json            # full sweep, ~60-90 s on an H100
    python benchmarks/attn_sweep.py --quick --batches 64 256                 # narrower grid
    TRITON_INTERPRET=1 python benchmarks/attn_sweep.py --cpu-smoke           # CPU, Triton interpreter, tiny sizes

Shape: 16 query heads, 8 KV heads, head_dim 128, block_size 16, bf16, decode only (one query token per sequence,
``max_query_len`` 1, ``max_seq_len`` = 4096 as the engine's decode CUDA graphs pass it). Cases: B in {32, 64, 128,
200, 256} with context lengths uniform in [200, 2000] (seeded per B, so a case does not depend on which others run),
plus B=256 at a uniform 800. Each case gets a paged KV cache with a shuffled block table (random K/V), and enough
copies of it that the KV read by the repeated calls overflows the 50 MB L2.

Configs: the default (``_launch_config`` as shipped), then ``_launch_config`` monkeypatched to return block_m 16,
tile_n x num_warps x num_stages from the grid, num_splits as the default picks. For B <= 64 the best few tile
configs (``--split-top``, and the default's tiles) are also run with num_splits forced to each of {1, 2, 4} that
differs from the default (``--full-split-grid``: the whole grid). A config that fails to compile (e.g. shared memory
exceeded) is reported and skipped. Each config's output is compared with the default's (max abs diff <= --atol);
the default's with ``inferd.kernels.reference`` (float32 SDPA).

Timing: one eager call (compiles; its output is the one checked), a warm-up per cache copy, then a CUDA graph of
``--calls`` (20) calls captured and replayed a few times (CUDA events around each replay); the figure is the median
replay time / calls, in us per call. ``--no-graph`` times eager calls between CUDA events instead.
``--budget-s S`` skips (and lists) the configs left once the sweep has run S seconds. Most of a first run on a fresh
machine is Triton compilation (~60 kernel variants; the "1st s" column); a second run hits Triton's disk cache.
Bandwidth = bytes of K and V the kernel must read (sum of context lengths x 8 KV heads x 128 x 2 bytes x 2) / time,
and as % of 3.35 TB/s (H100 SXM datasheet). Masked tail positions are not fetched, so these bytes are the same for
every config (rankings by time and by bandwidth agree); the JSON also gives the bytes with each context rounded up
to the config's tile_n (``tile_bytes``) and the bandwidth on those.

``--cpu-smoke``: TRITON_INTERPRET=1 (set by the script before Triton is imported), float32 (the interpreter gets
bf16 dots wrong), B=2 with contexts in [20, 60], a two-config grid plus one config meant to fail, wall-clock timing
of one call. It checks that the script runs end to end, not any speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 16, 8, 128, 16  # Qwen3-0.6B attention
PEAK_BW = 3.35e12  # H100 SXM HBM3 datasheet, bytes/s
L2_OVERFLOW_BYTES = (
    150e6  # KV copies so that the bytes read across repeated calls are > 3x the H100's 50 MB L2
)


@dataclass
class Case:
    name: str
    batch: int
    seq_lens: list[int]


@dataclass
class Result:
    label: str
    config: dict[str, int]
    is_default: bool = False
    status: str = "ok"  # ok | mismatch | compile_error | error | skipped
    us: float | None = None
    us_replays: list[float] = field(default_factory=list)
    first_call_s: float | None = None  # includes compilation when the variant is new
    max_abs_diff: float | None = None
    gbps: float | None = None
    pct_roof: float | None = None
    tile_bytes: int | None = None
    tile_gbps: float | None = None
    error: str | None = None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="batch sizes (default 32 64 128 200 256)"
    )
    p.add_argument("--no-uniform800", action="store_true", help="skip the B=256 uniform-800 case")
    p.add_argument(
        "--quick", action="store_true", help="narrower grid (num_warps 4/8, num_stages 2/3), fewer reps"
    )
    p.add_argument("--tile-n", type=int, nargs="+", default=None, help="override the tile_n grid")
    p.add_argument("--num-warps", type=int, nargs="+", default=None, help="override the num_warps grid")
    p.add_argument("--num-stages", type=int, nargs="+", default=None, help="override the num_stages grid")
    p.add_argument(
        "--split-top", type=int, default=None, help="tile configs tried with forced splits (default 3)"
    )
    p.add_argument("--full-split-grid", action="store_true", help="forced splits over the whole tile grid")
    p.add_argument("--max-split-batch", type=int, default=64, help="forced-split variants for B <= this")
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="max_seq_len argument (default 4096, as the decode graphs pass; --cpu-smoke: the longest context)",
    )
    p.add_argument("--calls", type=int, default=20, help="calls per captured CUDA graph")
    p.add_argument(
        "--target-ms", type=float, default=None, help="replay time per config (default 60, quick 30)"
    )
    p.add_argument(
        "--no-graph", action="store_true", help="time eager calls instead of a replayed CUDA graph"
    )
    p.add_argument("--atol", type=float, default=2e-2, help="max abs diff vs the default config's output")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip (and report) configs once the sweep has run this long",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default=None)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny run on the CPU via TRITON_INTERPRET=1")
    return p.parse_args()


def make_cases(args: argparse.Namespace) -> list[Case]:
    if args.cpu_smoke:
        batches = args.batches or [2]
        lo, hi = 20, 60
    else:
        batches = args.batches or [32, 64, 128, 200, 256]
        lo, hi = 200, 2000
    cases = []
    for b in batches:
        rng = random.Random(args.seed * 100003 + b)
        cases.append(Case(f"B={b} ctx~U[{lo},{hi}]", b, [rng.randint(lo, hi) for _ in range(b)]))
    if not args.no_uniform800 and not args.cpu_smoke and 256 in batches:
        cases.append(Case("B=256 ctx=800", 256, [800] * 256))
    return cases


def build_inputs(
    seq_lens: list[int], dtype: Any, device: str, cpu_gen: Any, dev_gen: Any, max_seq_len: int
) -> dict[str, Any]:
    """A paged KV cache holding exactly these sequences, blocks handed out in a shuffled order, plus their queries."""
    import torch

    def randn(*shape: int) -> torch.Tensor:  # drawn on the device: the caches reach ~1 GB
        return torch.randn(shape, generator=dev_gen, device=device, dtype=dtype)

    blocks = [math.ceil(s / BLOCK_SIZE) for s in seq_lens]
    num_blocks = sum(blocks)
    perm = torch.randperm(num_blocks, generator=cpu_gen, dtype=torch.int64).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
    start = 0
    for b, n in enumerate(blocks):
        table[b, :n] = perm[start : start + n]
        start += n
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    return {
        "query": randn(len(seq_lens), NUM_HEADS, HEAD_DIM),
        "k_cache": randn(*shape),
        "v_cache": randn(*shape),
        "block_tables": table.to(device),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=device),
        "query_start_loc": torch.arange(len(seq_lens) + 1, dtype=torch.int32, device=device),
        "max_query_len": 1,
        "max_seq_len": max_seq_len,
        "scale": HEAD_DIM**-0.5,
    }


def candidate(default_cfg: Any, tile_n: int, warps: int, stages: int, splits: int) -> Any:
    """The default launch config with block_m 16 and the given tiles, warps, stages and splits."""
    return default_cfg._replace(
        block_m=16, tile_n=tile_n, num_warps=warps, num_stages=stages, num_splits=splits
    )


def label(cfg: Any) -> str:
    return f"tn{cfg.tile_n} sp{cfg.num_splits} w{cfg.num_warps} st{cfg.num_stages}"


def main() -> None:
    args = parse_args()
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    import torch
    import triton

    from inferd.kernels import reference, triton_attention

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        raise SystemExit("attn_sweep.py needs a CUDA GPU (or --cpu-smoke)")
    if args.cpu_smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--cpu-smoke needs TRITON_INTERPRET=1")
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    use_graph = cuda and not args.no_graph
    itemsize = torch.tensor([], dtype=torch.bfloat16).element_size()  # bytes are reported for the bf16 cache

    if args.cpu_smoke:
        tile_grid, warp_grid, stage_grid = [32, 64], [4], [2]
    elif args.quick:
        tile_grid, warp_grid, stage_grid = [32, 64, 128], [4, 8], [2, 3]
    else:
        tile_grid, warp_grid, stage_grid = [32, 64, 128], [2, 4, 8], [2, 3, 4]
    tile_grid = args.tile_n or tile_grid
    warp_grid = args.num_warps or warp_grid
    stage_grid = args.num_stages or stage_grid
    split_top = (
        args.split_top if args.split_top is not None else (1 if args.cpu_smoke else 2 if args.quick else 3)
    )
    target_ms = args.target_ms or (30.0 if args.quick else 60.0)
    if not hasattr(triton_attention, "_launch_config") or not hasattr(triton_attention, "_LaunchConfig"):
        raise SystemExit("inferd.kernels.triton_attention has no _launch_config/_LaunchConfig to override")
    original_launch_config = triton_attention._launch_config
    launch_fields = triton_attention._LaunchConfig._fields

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def time_config(sets: list[dict[str, Any]]) -> list[float]:
        """Microseconds per call, one figure per replay (graph) or per group of calls (eager)."""
        fn = triton_attention.paged_attention
        if not cuda:  # interpreter: one call, wall clock
            start = time.perf_counter()
            fn(**sets[0])
            return [1e6 * (time.perf_counter() - start)]
        calls = args.calls
        if use_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as torch recommends before a capture
                for i in range(len(sets)):
                    fn(**sets[i])
            torch.cuda.current_stream().wait_stream(side)
            sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(calls):
                    fn(**sets[i % len(sets)])

            def run() -> None:
                graph.replay()

        else:

            def run() -> None:
                for i in range(calls):
                    fn(**sets[i % len(sets)])

        run()
        sync()
        start_ev, end_ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start_ev.record()
        run()
        end_ev.record()
        end_ev.synchronize()
        reps = max(3, min(25, round(target_ms / max(start_ev.elapsed_time(end_ev), 1e-3))))
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
        ]
        for s, e in events:
            s.record()
            run()
            e.record()
        sync()
        return [1e3 * s.elapsed_time(e) / calls for s, e in events]

    def run_config(
        name: str, cfg: Any, sets: list[dict[str, Any]], default_out: Any, case: Case, is_default: bool
    ) -> tuple[Result, Any]:
        res = Result(name, dict(zip(launch_fields, (int(x) for x in cfg))), is_default=is_default)
        if not is_default:
            triton_attention._launch_config = lambda *a, **k: cfg
        try:
            start = time.perf_counter()
            try:
                out = triton_attention.paged_attention(**sets[0])
                sync()
            except Exception as exc:  # compilation (e.g. out of shared memory) or launch failure
                res.status, res.error = "compile_error", f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                return res, None
            res.first_call_s = round(time.perf_counter() - start, 3)
            if default_out is not None:
                res.max_abs_diff = (out.float() - default_out.float()).abs().max().item()
                if not res.max_abs_diff <= args.atol:  # also catches NaN
                    res.status = "mismatch"
            try:
                res.us_replays = [round(t, 3) for t in time_config(sets)]
            except Exception as exc:
                res.status, res.error = "error", f"timing: {type(exc).__name__}: {str(exc).strip()[:300]}"
                return res, out
            res.us = statistics.median(res.us_replays)
            kv_bytes = sum(case.seq_lens) * NUM_KV_HEADS * HEAD_DIM * itemsize * 2
            tile_n = res.config["tile_n"]
            res.tile_bytes = (
                sum(-(-s // tile_n) * tile_n for s in case.seq_lens) * NUM_KV_HEADS * HEAD_DIM * itemsize * 2
            )
            res.gbps = kv_bytes / res.us / 1e3
            res.pct_roof = 100 * kv_bytes / (res.us * 1e-6) / PEAK_BW
            res.tile_gbps = res.tile_bytes / res.us / 1e3
            return res, out
        finally:
            triton_attention._launch_config = original_launch_config

    t_start = time.perf_counter()
    cases = make_cases(args)
    header = (
        f"{torch.cuda.get_device_name() if cuda else 'CPU (TRITON_INTERPRET=1)'}, torch {torch.__version__}, "
        f"{'bf16' if cuda else 'float32'}, heads {NUM_HEADS}/{NUM_KV_HEADS}, head_dim {HEAD_DIM}, "
        f"block_size {BLOCK_SIZE}, timing {f'CUDA graph of {args.calls} calls' if use_graph else 'eager'}"
    )
    print(header + f", triton {triton.__version__}", flush=True)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu-interpreter",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype),
        "shape": {
            "num_heads": NUM_HEADS,
            "num_kv_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "block_size": BLOCK_SIZE,
        },
        "timing": {"graph": use_graph, "calls": args.calls, "target_ms": target_ms},
        "peak_bw": PEAK_BW,
        "atol": args.atol,
        "cases": [],
    }

    def sweep_case(case: Case) -> dict[str, Any]:
        case_start = time.perf_counter()
        cpu_gen = torch.Generator().manual_seed(args.seed * 7919 + case.batch)
        dev_gen = torch.Generator(device=device).manual_seed(args.seed * 7919 + case.batch + 1)
        max_seq_len = args.max_seq_len or (max(case.seq_lens) if args.cpu_smoke else 4096)
        kv_bytes = sum(case.seq_lens) * NUM_KV_HEADS * HEAD_DIM * itemsize * 2
        num_sets = 1 if not cuda else max(1, min(4, math.ceil(L2_OVERFLOW_BYTES / kv_bytes)))
        sets = [
            build_inputs(case.seq_lens, dtype, device, cpu_gen, dev_gen, max_seq_len) for _ in range(num_sets)
        ]
        a0 = sets[0]
        default_cfg = original_launch_config(
            a0["query"], NUM_KV_HEADS, case.batch, max(16, triton.next_power_of_2(HEAD_DIM)), 1, max_seq_len
        )
        ref = reference.paged_attention(**a0)
        results: list[Result] = []
        default_res, default_out = run_config(
            f"default ({label(default_cfg)})", default_cfg, sets, None, case, is_default=True
        )
        ref_diff = None
        if default_out is not None:
            ref_diff = (default_out.float() - ref.float()).abs().max().item()
        del ref
        results.append(default_res)

        grid = [
            candidate(default_cfg, tn, w, st, default_cfg.num_splits)
            for tn in tile_grid
            for w in warp_grid
            for st in stage_grid
        ]
        if (
            args.cpu_smoke
        ):  # a config that cannot compile (tile_n not a power of two): exercises the skip path
            grid.append(candidate(default_cfg, 24, 4, 2, default_cfg.num_splits))
        done: set[tuple[int, ...]] = set()

        def try_config(cfg: Any) -> None:
            if tuple(cfg) in done:
                return
            done.add(tuple(cfg))
            if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                res = Result(label(cfg), dict(zip(launch_fields, (int(x) for x in cfg))), status="skipped")
                res.error = f"--budget-s {args.budget_s} exceeded"
            else:
                res, _ = run_config(label(cfg), cfg, sets, default_out, case, is_default=False)
            results.append(res)
            us = "" if res.us is None else f"{res.us:9.2f} us"
            print(f"  {case.name:<20} {res.label:<26} {res.status:<13} {us}", flush=True)

        for cfg in grid:
            try_config(cfg)
        if case.batch <= args.max_split_batch:
            ok = sorted((r for r in results if r.status == "ok" and r.us is not None), key=lambda r: r.us)
            tiles: list[tuple[int, int, int]] = []
            pool = ok if args.full_split_grid else ok[:split_top]
            for r in [default_res, *pool]:
                t = (r.config["tile_n"], r.config["num_warps"], r.config["num_stages"])
                if t not in tiles:
                    tiles.append(t)
            for splits in (1, 2, 4):
                if splits != default_cfg.num_splits:
                    for tn, w, st in tiles:
                        try_config(candidate(default_cfg, tn, w, st, splits))

        timed = sorted((r for r in results if r.us is not None), key=lambda r: r.us)
        good = [r for r in timed if r.status == "ok"]
        best = good[0] if good else None
        speedup = default_res.us / best.us if best is not None and default_res.us else None
        print(
            f"\n== {case.name}: sum ctx {sum(case.seq_lens):,}, KV read {kv_bytes / 1e6:.1f} MB per call, "
            f"{num_sets} cache cop{'y' if num_sets == 1 else 'ies'}; default {label(default_cfg)}; "
            f"default vs reference max abs diff {ref_diff if ref_diff is None else f'{ref_diff:.2e}'} =="
        )
        print(
            f"{'rank':>4}  {'config':<26} {'us':>9} {'GB/s':>7} {'%roof':>6} {'maxdiff':>9} {'1st s':>6}  note"
        )
        for i, r in enumerate(timed, 1):
            note = ("<- default " if r.is_default else "") + (
                "MISMATCH" if r.status == "mismatch" else r.status if r.status != "ok" else ""
            )
            diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}"
            print(
                f"{i:>4}  {r.label:<26} {r.us:>9.2f} {r.gbps:>7.0f} {r.pct_roof:>6.1f} {diff:>9} "
                f"{r.first_call_s if r.first_call_s is not None else '':>6}  {note}"
            )
        for r in results:
            if r.us is None:
                print(f"   -  {r.label:<26} {r.status}: {r.error}")
        if best is not None:
            print(
                f"best: {best.label}  {best.us:.2f} us  ({best.pct_roof:.1f}% of roof)  "
                f"speed-up over default {speedup:.3f}x"
                if speedup
                else f"best: {best.label}"
            )
        if ref_diff is not None and not ref_diff <= args.atol:
            print(f"WARNING: the default config differs from the reference by {ref_diff:.2e} (> {args.atol})")
        print(f"(case took {time.perf_counter() - case_start:.1f} s)\n", flush=True)
        return {
            "name": case.name,
            "batch": case.batch,
            "seq_lens": case.seq_lens,
            "sum_ctx": sum(case.seq_lens),
            "kv_bytes": kv_bytes,
            "max_seq_len_arg": max_seq_len,
            "cache_copies": num_sets,
            "default_config": dict(zip(launch_fields, (int(x) for x in default_cfg))),
            "default_vs_reference_max_abs_diff": ref_diff,
            "default_us": default_res.us,
            "best": None if best is None else {"label": best.label, "config": best.config, "us": best.us},
            "speedup_vs_default": speedup,
            "results": [r.__dict__ for r in results],
        }

    for case in cases:
        report["cases"].append(sweep_case(case))
        if cuda:
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - t_start
    report["elapsed_s"] = round(elapsed, 1)
    print("summary (us per call):")
    print(f"{'case':<22} {'default':>9} {'best':>9} {'speed-up':>9}  best config")
    for c in report["cases"]:
        b = c["best"]
        print(
            f"{c['name']:<22} {c['default_us'] or float('nan'):>9.2f} {b['us'] if b else float('nan'):>9.2f} "
            f"{c['speedup_vs_default'] or float('nan'):>8.3f}x  {b['label'] if b else '-'}"
        )
    failures = sum(r["status"] != "ok" for c in report["cases"] for r in c["results"])
    first_calls = sum(r["first_call_s"] or 0.0 for c in report["cases"] for r in c["results"])
    print(
        f"total {elapsed:.1f} s (first calls, i.e. compilation, {first_calls:.1f} s); "
        f"{failures} config(s) failed or mismatched"
    )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.output_json}")


if __name__ == "__main__":
    sys.exit(main())
