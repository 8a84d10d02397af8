"""GPU micro-benchmark: the Triton skinny GEMM (``kernels/triton_gemv.py``) vs cuBLAS (``F.linear``) at decode shapes.

    python benchmarks/gemv_bench.py [--output-json out.json] [--m 1 8 16 24 32 48 64]
        [--sweep [--sweep-seconds 240] [--sweep-models qwen3-0.6b]]

Every linear layer of Qwen3-0.6B, Qwen3-8B and Llama-3.1-8B (the 8B ones also at tensor parallel 2), bf16, at
M = 1, 2, 4, 8, 16 rows (``--m``: other row counts, up to the kernel's 64; the Triton column always runs the skinny
kernel, whatever ``INFERD_SKINNY_MAX_M`` lets the server dispatch to it). Each implementation is timed as a decode
step runs it: ``--calls`` (20) calls captured into one CUDA graph, cycling over enough copies of the weight that they
overflow the L2 (as 28+ layers do), replayed ``--replays`` times; the median replay over ``--calls`` is the time per
call. GB/s = weight bytes / time; ``roof`` is the weight bytes over ``--bandwidth`` (3.35 TB/s, the H100 SXM
datasheet). Each shape's output is checked against a float32 matmul (``err``: relative Frobenius error). Totals per
model sum the layer times x layers + lm_head, at M = 1 and 8 (at every ``--m`` value when ``--m`` is given).
``--sweep`` then times alternative launch configs on the 0.6B and 8B shapes (``--sweep-models``) at M = 1, 8, 16 (at
every ``--m`` value when ``--m`` is given) to tune ``triton_gemv``'s table; it stops after ``--sweep-seconds``.
Then every ``down`` projection is timed as the MLP runs it: ``silu_and_mul`` + skinny GEMM (two kernels) vs
``silu_and_mul_linear`` (one kernel), with ``same`` = the two give identical bits (``--no-fused`` skips this).
The first output line is the GPU name; a config that fails is reported and skipped.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

Layers = list[tuple[str, int, int]]  # (layer, K, N)
_BASE: dict[str, tuple[int, Layers]] = {
    "qwen3-0.6b": (
        28,
        [
            ("qkv", 1024, 4096),
            ("o", 2048, 1024),
            ("gate_up", 1024, 6144),
            ("down", 3072, 1024),
            ("lm_head", 1024, 151936),
        ],
    ),
    "qwen3-8b": (
        36,
        [
            ("qkv", 4096, 6144),
            ("o", 4096, 4096),
            ("gate_up", 4096, 24576),
            ("down", 12288, 4096),
            ("lm_head", 4096, 151936),
        ],
    ),
    "llama-3.1-8b": (
        32,
        [
            ("qkv", 4096, 6144),
            ("o", 4096, 4096),
            ("gate_up", 4096, 28672),
            ("down", 14336, 4096),
            ("lm_head", 4096, 128256),
        ],
    ),
}
_COLUMN = {"qkv", "gate_up", "lm_head"}  # tensor parallel splits N of these and K of the others


def _tp2(layers: Layers) -> Layers:
    return [(n, k, c // 2) if n in _COLUMN else (n, k // 2, c) for n, k, c in layers]


MODELS: dict[str, tuple[int, Layers]] = {
    **_BASE,
    "qwen3-8b-tp2": (36, _tp2(_BASE["qwen3-8b"][1])),
    "llama-3.1-8b-tp2": (32, _tp2(_BASE["llama-3.1-8b"][1])),
}
M_VALUES = (1, 2, 4, 8, 16)  # --m's default
TOTAL_M = (1, 8)  # totals without --m
SWEEP_M = (1, 8, 16)  # sweep rows without --m
SWEEP_MODELS = ("qwen3-0.6b", "qwen3-8b")  # --sweep-models' default
DTYPE = torch.bfloat16


@dataclass
class Result:
    K: int
    N: int
    M: int
    weight_bytes: int
    cublas_us: float | None = None
    triton_us: float | None = None
    err_triton: float | None = None
    err_cublas: float | None = None
    config: str = ""
    error: str = ""


def make_weights(K: int, N: int, calls: int, flush_bytes: float) -> list[torch.Tensor]:
    """Distinct [N, K] weights, enough that cycling through them overflows the L2."""
    copies = min(calls, max(1, math.ceil(flush_bytes / (N * K * 2))))
    return [(torch.randn(N, K, device="cuda", dtype=DTYPE) * K**-0.5) for _ in range(copies)]


def graph_us(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    weights: list[torch.Tensor],
    calls: int,
    replays: int,
) -> float:
    """Median microseconds per call of ``calls`` calls captured in one CUDA graph."""
    fn(x, weights[0])  # compile / pick algorithms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(x, weights[i % len(weights)])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times) * 1e3 / calls


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(out).any():
        return float("nan")
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def bench_shape(K: int, N: int, args: argparse.Namespace) -> dict[int, Result]:
    from inferd.kernels import triton_gemv

    results: dict[int, Result] = {}
    weights = make_weights(K, N, args.calls, args.flush_mb * 2**20)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m in args.m or M_VALUES:
        r = Result(K, N, m, N * K * 2)
        results[m] = r
        x = torch.randn(m, K, device="cuda", dtype=DTYPE)  # [M, K]
        errors = []
        try:
            ref = x.float() @ weights[0].float().T  # [M, N]
            r.err_cublas = rel_err(F.linear(x, weights[0]), ref)
            r.err_triton = rel_err(triton_gemv.linear(x, weights[0]), ref)
            del ref
        except Exception as e:
            errors.append(f"check: {type(e).__name__}: {e}")
        try:
            r.config = triton_gemv.pick_config(m, N, K, DTYPE, sms).describe(K)
        except Exception as e:
            errors.append(f"config: {type(e).__name__}: {e}")
        for name, fn in (("cublas", F.linear), ("triton", triton_gemv.linear)):
            try:
                setattr(r, f"{name}_us", graph_us(fn, x, weights, args.calls, args.replays))
            except Exception as e:
                errors.append(f"{name}: {type(e).__name__}: {e}")
                if args.verbose:
                    traceback.print_exc()
        r.error = "; ".join(errors)[:500]
    del weights
    gc.collect()
    torch.cuda.empty_cache()
    return results


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(table: dict[tuple[int, int], dict[int, Result]], bandwidth: float) -> list[dict]:
    rows = []
    head = (
        f"{'model':<17}{'layer':<8}{'K':>6}{'N':>7}{'M':>3} {'roof':>6} {'cuBLAS':>7} {'GB/s':>5} "
        f"{'triton':>7} {'GB/s':>5} {'speedup':>7} {'err':>8}  config"
    )
    print(head + "\n" + "-" * len(head))
    for model, (_, layers) in MODELS.items():
        for layer, K, N in layers:
            for m, r in table[(K, N)].items():
                gbs = {
                    k: (r.weight_bytes / (us * 1e3) if us else None)
                    for k, us in (("cublas", r.cublas_us), ("triton", r.triton_us))
                }
                speedup = r.cublas_us / r.triton_us if r.cublas_us and r.triton_us else None
                print(
                    f"{model:<17}{layer:<8}{K:>6}{N:>7}{m:>3} {r.weight_bytes / bandwidth * 1e6:>6.1f} "
                    f"{_fmt(r.cublas_us, '7.1f'):>7} {_fmt(gbs['cublas'], '5.0f'):>5} "
                    f"{_fmt(r.triton_us, '7.1f'):>7} {_fmt(gbs['triton'], '5.0f'):>5} "
                    f"{_fmt(speedup, '6.2f'):>6}x {_fmt(r.err_triton, '8.1e'):>8}  {r.config}"
                    + (f"  ERROR {r.error}" if r.error else "")
                )
                rows.append(
                    {
                        "model": model,
                        "layer": layer,
                        **asdict(r),
                        "cublas_gbps": gbs["cublas"],
                        "triton_gbps": gbs["triton"],
                        "speedup": speedup,
                        "roof_us": r.weight_bytes / bandwidth * 1e6,
                    }
                )
        print()
    return rows


def totals(
    table: dict[tuple[int, int], dict[int, Result]], bandwidth: float, ms: tuple[int, ...] = TOTAL_M
) -> list[dict]:
    out = []
    print(
        f"{'per decode step':<17}{'M':>3} {'roof us':>8} {'cuBLAS us':>10} {'triton us':>10} {'speedup':>8}"
    )
    for model, (num_layers, layers) in MODELS.items():
        for m in ms:
            sums: dict[str, float | None] = {"cublas": 0.0, "triton": 0.0}
            roof = 0.0
            for layer, K, N in layers:
                times = 1 if layer == "lm_head" else num_layers
                r = table[(K, N)][m]
                roof += times * r.weight_bytes / bandwidth * 1e6
                for impl in sums:
                    us = getattr(r, f"{impl}_us")
                    cur = sums[impl]
                    sums[impl] = None if us is None or cur is None else cur + times * us
            c, t = sums["cublas"], sums["triton"]
            speedup = c / t if c and t else None
            print(
                f"{model:<17}{m:>3} {roof:>8.0f} {_fmt(c, '10.0f'):>10} {_fmt(t, '10.0f'):>10} "
                f"{_fmt(speedup, '7.2f'):>7}x"
            )
            out.append(
                {"model": model, "M": m, "roof_us": roof, "cublas_us": c, "triton_us": t, "speedup": speedup}
            )
    return out


def sweep(table: dict[tuple[int, int], dict[int, Result]], args: argparse.Namespace) -> list[dict]:
    """Time alternative launch configs per shape; prints the best next to the table's choice. Each (shape, M) gets an
    equal share of the time left (what one leaves unused goes to the next), so a long candidate list (M > 16: the
    block_n x block_k x num_warps x num_stages grid below) cannot starve the shapes after it."""
    from inferd.kernels import triton_gemv
    from inferd.kernels.triton_gemv import GemvConfig

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    fma = [(16, 512, 8, 3), (16, 256, 4, 3), (16, 256, 4, 1), (16, 512, 8, 1), (8, 512, 4, 3)]
    fma += [(16, 512, 4, 3), (32, 256, 8, 3), (32, 512, 8, 2), (8, 256, 2, 3), (4, 512, 4, 3)]
    # narrow column tiles over long K blocks: the one-row winners for small weights (run-s6-6)
    fma += [(8, 256, 4, 3), (4, 2048, 8, 1), (2, 1024, 2, 2), (4, 1024, 4, 2), (8, 1024, 8, 2)]
    dot = [(64, 128, 4, 4), (64, 128, 4, 3), (64, 256, 4, 3), (32, 128, 4, 4), (32, 256, 4, 3)]
    dot += [(128, 128, 4, 3), (128, 64, 8, 4), (64, 64, 4, 5)]
    # 17..64 rows (BLOCK_M 32 / 64): block_n x block_k x num_warps x num_stages
    wide = list(itertools.product((64, 32, 128), (128, 64), (4, 8), (4, 3, 2)))
    ms = args.m or SWEEP_M
    shapes = list(dict.fromkeys((K, N) for model in args.sweep_models for _, K, N in MODELS[model][1]))
    deadline = time.monotonic() + args.sweep_seconds
    found = []
    pairs_left = len(shapes) * len(ms)
    print(f"\nsweep (M, K, N): best config vs the table's; {args.sweep_seconds:.0f} s budget")
    for K, N in shapes:
        if time.monotonic() > deadline:
            print(f"sweep: out of time; {pairs_left} (shape, M) pairs not swept")
            break
        weights = make_weights(K, N, args.calls, args.flush_mb * 2**20)
        for m in ms:
            now = time.monotonic()
            if now > deadline:
                break
            share_end = now + (deadline - now) / pairs_left
            pairs_left -= 1
            x = torch.randn(m, K, device="cuda", dtype=DTYPE)
            if m == 1:
                bases = [GemvConfig(False, *c) for c in fma] + [GemvConfig(True, *dot[0])]
            elif m <= 16:
                bases = [GemvConfig(True, *c) for c in dot]
            else:  # the table's pick first, so it is timed even when the budget runs out mid-shape
                picked = triton_gemv.pick_config(m, N, K, DTYPE, sms)
                bases = [replace(picked, k_split=0)] + [GemvConfig(True, *c) for c in wide]
            fitted = [triton_gemv.fit_config(b, N, K, sms, per_sm) for b in bases for per_sm in (1, 2, 4, 8)]
            cands = list(dict.fromkeys(fitted + [replace(c, k_split=0) for c in fitted]))
            timed = []
            for cfg in cands:
                if time.monotonic() > share_end:
                    break
                try:
                    us = graph_us(
                        lambda a, w, c=cfg: triton_gemv.launch(a, w, None, c), x, weights, args.calls, 8
                    )
                    timed.append((us, cfg))
                except Exception as e:
                    print(f"  K={K} N={N} M={m} {cfg.describe(K)}: {type(e).__name__}: {str(e)[:200]}")
            if not timed:
                continue
            best_us, best = min(timed, key=lambda t: t[0])
            base = table.get((K, N), {}).get(m)
            cub, cur = (base.cublas_us, base.triton_us) if base else (None, None)
            print(
                f"  M={m:<2} K={K:<6} N={N:<7} best {best_us:7.1f} us ({best.describe(K)}, "
                f"k_split={best.k_split})  table {_fmt(cur, '.1f')} ({base.config if base else '-'})  "
                f"cuBLAS {_fmt(cub, '.1f')}  [{len(timed)}/{len(cands)} configs]"
            )
            found.append(
                {
                    "K": K,
                    "N": N,
                    "M": m,
                    "best_us": best_us,
                    "best": asdict(best),
                    "table_us": cur,
                    "cublas_us": cub,
                    "candidates": len(cands),
                    "all": [{"us": us, **asdict(c)} for us, c in sorted(timed, key=lambda t: t[0])],
                }
            )
        del weights
        torch.cuda.empty_cache()
    return found


def fused_mlp(args: argparse.Namespace) -> list[dict]:
    """The down projection with its activation: two kernels vs the fused one, per down shape and M."""
    from inferd.kernels import triton_gemv, triton_ops

    def unfused(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return triton_gemv.linear(triton_ops.silu_and_mul(a), w)

    shapes = list(
        dict.fromkeys((K, N) for _, layers in MODELS.values() for name, K, N in layers if name == "down")
    )
    print(f"\n{'down K':>7}{'N':>6}{'M':>3} {'2 kernels':>9} {'fused':>7} {'saved':>6}  same  config")
    rows = []
    for K, N in shapes:
        weights = make_weights(K, N, args.calls, args.flush_mb * 2**20)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for m in args.m or M_VALUES:
            x = torch.randn(m, 2 * K, device="cuda", dtype=DTYPE)  # [M, 2K]: gate | up
            row: dict = {
                "K": K,
                "N": N,
                "M": m,
                "config": triton_gemv.pick_config(m, N, K, DTYPE, sms).describe(K),
            }
            try:
                row["same"] = torch.equal(
                    unfused(x, weights[0]), triton_gemv.silu_and_mul_linear(x, weights[0])
                )
                row["unfused_us"] = graph_us(unfused, x, weights, args.calls, args.replays)
                row["fused_us"] = graph_us(
                    triton_gemv.silu_and_mul_linear, x, weights, args.calls, args.replays
                )
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            u, f = row.get("unfused_us"), row.get("fused_us")
            print(
                f"{K:>7}{N:>6}{m:>3} {_fmt(u, '9.1f'):>9} {_fmt(f, '7.1f'):>7} "
                f"{_fmt(u - f if u and f else None, '6.1f'):>6}  {row.get('same', '-')!s:<5} {row['config']}"
                + (f"  ERROR {row['error']}" if "error" in row else "")
            )
            rows.append(row)
        del weights
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-json", default=None, help="write every row, the totals and the sweep here")
    p.add_argument("--calls", type=int, default=20, help="calls captured per CUDA graph")
    p.add_argument("--replays", type=int, default=15, help="timed graph replays (median)")
    p.add_argument("--flush-mb", type=float, default=256, help="weight copies per shape reach this many MiB")
    p.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s for the roof column")
    p.add_argument("--sweep", action="store_true", help="also time alternative launch configs")
    p.add_argument("--sweep-seconds", type=float, default=240, help="time budget of the whole --sweep")
    p.add_argument(
        "--sweep-models",
        nargs="+",
        choices=list(MODELS),
        default=list(SWEEP_MODELS),
        metavar="MODEL",
        help=f"models whose layer shapes --sweep tunes (default: {' '.join(SWEEP_MODELS)})",
    )
    p.add_argument(
        "--m",
        nargs="+",
        type=int,
        default=None,
        metavar="M",
        help=f"row counts to time, 1..64 (default: {' '.join(map(str, M_VALUES))}; the totals and the "
        f"sweep then use these too instead of M = {' '.join(map(str, TOTAL_M))} and "
        f"{' '.join(map(str, SWEEP_M))})",
    )
    p.add_argument("--no-fused", action="store_true", help="skip the silu_and_mul_linear vs two-kernel table")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failed configs")
    args = p.parse_args()
    if args.m is not None:
        from inferd.kernels.triton_gemv import KERNEL_MAX_M

        if any(not 1 <= m <= KERNEL_MAX_M for m in args.m):
            p.error(f"--m values must be in 1..{KERNEL_MAX_M}; got {args.m}")
        args.m = tuple(dict.fromkeys(args.m))
    if not torch.cuda.is_available():
        print("no CUDA GPU")
        sys.exit(1)
    print(torch.cuda.get_device_name(0), flush=True)
    import triton

    began = time.monotonic()
    print(f"torch {torch.__version__}, triton {triton.__version__}, {args.calls} calls per graph\n")
    torch.manual_seed(0)
    table: dict[tuple[int, int], dict[int, Result]] = {}
    for _, layers in MODELS.values():
        for _, K, N in layers:
            if (K, N) not in table:
                try:
                    table[(K, N)] = bench_shape(K, N, args)
                except Exception as e:
                    msg = f"{type(e).__name__}: {e}"[:300]
                    print(f"K={K} N={N}: {msg}", flush=True)
                    table[(K, N)] = {m: Result(K, N, m, N * K * 2, error=msg) for m in args.m or M_VALUES}
    rows = print_table(table, args.bandwidth)
    total_rows = totals(table, args.bandwidth, args.m or TOTAL_M)
    print(f"\nmain table took {time.monotonic() - began:.1f} s")
    found = sweep(table, args) if args.sweep else []
    fused_rows = [] if args.no_fused else fused_mlp(args)
    if args.output_json:
        report = {
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "calls_per_graph": args.calls,
            "rows": rows,
            "totals": total_rows,
            "sweep": found,
            "fused_mlp": fused_rows,
        }
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.output_json}")


if __name__ == "__main__":
    main()
