"""GPU micro-benchmark: NCCL ``dist.all_reduce`` vs the symmetric-memory one-shot all-reduce (``CustomAllReduce``).

    python benchmarks/allreduce_bench.py [--output-json out.json] [--world-size 2] [--tokens 1 8 32 128 256]

Two processes (spawned here, no torchrun; rendezvous through a file store in a temporary folder), one GPU each. For
each ``[num_tokens, 4096]`` bf16 tensor (Llama-3.1-8B's hidden state) each implementation is timed as a decode step
runs it: 64 chained all-reduces captured in one CUDA graph, replayed ``--replays`` times; the median replay over 64
is the time per all-reduce (µs, CUDA events on rank 0). ``CustomAllReduce`` takes every size here (its buffer is
8 MiB); in the server it takes tensors up to ``ONE_SHOT_MAX_BYTES`` (512 KiB, 64 tokens) and NCCL the rest.
``two_shot`` is ``torch.ops.symm_mem.two_shot_all_reduce_`` in place on the symmetric buffer (no copy in), for
reference. Results are checked against NCCL (eager, and after one graph replay). Errors are printed, never hung on:
the parent kills the ranks after ``--timeout`` seconds (90) and reports what it got.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HIDDEN = 4096
CALLS = 64


def _median_us(graph: Any, replays: int) -> float:
    import torch

    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / CALLS)
    return statistics.median(times)


def _capture(fn: Any) -> tuple[Any, Any]:
    import torch

    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize()
    return graph, out


def _save(out_dir: Path, result: dict[str, Any]) -> None:
    tmp = out_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out_dir / "result.json")


def _worker(
    rank: int, world_size: int, init_method: str, out_dir_s: str, tokens: list[int], replays: int
) -> None:
    out_dir = Path(out_dir_s)
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        import torch
        import torch.distributed as dist

        from inferd.distributed.custom_all_reduce import CustomAllReduce
        from inferd.distributed.parallel_state import destroy_tensor_parallel, init_tensor_parallel

        device = torch.device("cuda", rank)
        init_tensor_parallel(rank, world_size, init_method, device, custom_all_reduce=False)
        car = CustomAllReduce(device, one_shot_max_bytes=8 << 20)
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(device),
            "torch": torch.__version__,
            "world_size": world_size,
            "calls_per_graph": CALLS,
            "replays": replays,
            "dtype": "bfloat16",
            "hidden": HIDDEN,
            "custom_enabled": car.enabled,
            "custom_reason": car.reason,
            "rows": [],
        }
        gen = torch.Generator(device=device).manual_seed(rank)
        for t in tokens:
            x = torch.randn(t, HIDDEN, device=device, generator=gen).to(torch.bfloat16)
            row: dict[str, Any] = {"num_tokens": t, "bytes": x.numel() * x.element_size()}
            buf = x.clone()
            g_nccl, _ = _capture(lambda buf=buf: [dist.all_reduce(buf) for _ in range(CALLS)])
            if car.enabled:
                ref = x.clone()
                dist.all_reduce(ref)
                row["equal_eager"] = bool(torch.equal(car.all_reduce(x), ref))

                def chain(x: torch.Tensor = x) -> torch.Tensor:
                    y = x
                    for _ in range(CALLS):
                        y = car.all_reduce(y)
                    return y

                g_custom, y = _capture(chain)
                buf.copy_(x)
                g_nccl.replay()
                g_custom.replay()
                torch.cuda.synchronize()
                row["equal_graph"] = bool(torch.equal(y, buf))
            dist.barrier()
            row["nccl_us"] = _median_us(g_nccl, replays)
            if car.enabled:
                dist.barrier()
                row["custom_us"] = _median_us(g_custom, replays)
                row["speedup"] = row["nccl_us"] / row["custom_us"]
            result["rows"].append(row)
            if rank == 0:
                _save(out_dir, result)
        if car.enabled:  # last, so that a failure here loses nothing above
            for row in result["rows"]:
                try:
                    t = row["num_tokens"]
                    x = torch.randn(t, HIDDEN, device=device, generator=gen).to(torch.bfloat16)
                    symm = car._views[torch.bfloat16][: x.numel()].view(x.shape)
                    op = torch.ops.symm_mem.two_shot_all_reduce_
                    g_two, _ = _capture(
                        lambda symm=symm, op=op: [op(symm, "sum", car.group_name) for _ in range(CALLS)]
                    )
                    ref = x.clone()
                    dist.all_reduce(ref)  # one reduce, then doublings: compare after one replay
                    symm.copy_(x)
                    g_two.replay()
                    ref.mul_(2 ** (CALLS - 1))
                    torch.cuda.synchronize()
                    row["equal_two_shot"] = bool(torch.equal(symm, ref))
                    dist.barrier()
                    row["two_shot_us"] = _median_us(g_two, replays)
                except Exception as e:
                    row["two_shot_error"] = f"{type(e).__name__}: {e}"
                if rank == 0:
                    _save(out_dir, result)
        torch.cuda.synchronize()
        dist.barrier()
        car.close()
        destroy_tensor_parallel()
    except BaseException:
        (out_dir / f"rank{rank}.err").write_text(traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)


def _print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['device']}  torch {result['torch']}  world size {result['world_size']}  bf16 [T, {HIDDEN}]"
    )
    if not result["custom_enabled"]:
        print(f"custom all-reduce OFF: {result['custom_reason']}")
    print(
        f"{'tokens':>6} {'bytes':>9} {'nccl_us':>8} {'custom_us':>9} {'speedup':>7} {'two_shot_us':>11}  equal"
    )
    for row in result["rows"]:

        def fmt(key: str, width: int, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return f"{value:>{width}.2f}" if isinstance(value, float) else f"{'-':>{width}}"

        equal = [row.get(k) for k in ("equal_eager", "equal_graph", "equal_two_shot") if k in row]
        print(
            f"{row['num_tokens']:>6} {row['bytes']:>9} {fmt('nccl_us', 8)} {fmt('custom_us', 9)} "
            f"{fmt('speedup', 7)} {fmt('two_shot_us', 11)}  {all(equal) if equal else '-'}"
            + (f"  two_shot error: {row['two_shot_error']}" if "two_shot_error" in row else "")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=90.0, help="Kill the ranks after this many seconds.")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="inferd-allreduce-"))
    started = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, args.world_size, f"file://{tmp}/store", str(tmp), args.tokens, args.replays),
        )
        for rank in range(args.world_size)
    ]
    for p in procs:
        p.start()
    errors: list[str] = []
    timed_out = False
    while any(p.is_alive() for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            time.sleep(2.0)  # let the failed rank's peers report too, then stop them
            break
        if time.monotonic() - started > args.timeout:
            timed_out = True
            errors.append(f"timed out after {args.timeout:.0f} s; killed the ranks")
            break
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    for rank, p in enumerate(procs):
        err = tmp / f"rank{rank}.err"
        if err.exists():
            errors.append(f"rank {rank}:\n{err.read_text()}")
        elif p.exitcode not in (0, None) and not timed_out:
            errors.append(f"rank {rank} exited with code {p.exitcode}")
    result: dict[str, Any] = {"rows": []}
    if (tmp / "result.json").exists():
        result = json.loads((tmp / "result.json").read_text())
    result["errors"] = errors
    result["timed_out"] = timed_out
    result["wall_s"] = round(time.monotonic() - started, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    if "device" in result:
        _print_table(result)
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"wall {result['wall_s']} s")
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
