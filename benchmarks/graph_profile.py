"""GPU kernel times of decode steps as the engine really runs them: CUDA graphs on, multi-step rounds (the engine's
default ``num_scheduler_steps``), under torch.profiler. ``benchmarks/kernel_profile.py`` runs eager, so it shows
every kernel but not the graphs' timing; this shows the graphs.

    python benchmarks/graph_profile.py benchmarks/model-configs/qwen3-0.6b --batch 256 --context 800 \\
        --output-json graph_profile.json
    python benchmarks/graph_profile.py --cpu-smoke        # tiny random Qwen3 on the CPU (eager), end to end

``--batch`` requests of ``--context`` random prompt tokens (temperature 0.6, ignore_eos, max_tokens up to the model
length, no detokenization) are added at once; the engine is stepped until every prefill is done, then ``--warmup``
more steps, then ``--rounds`` engine steps are timed without the profiler and ``--rounds`` more under it (CPU + CUDA
activities). One engine step = one schedule + ``num_steps`` decode steps run back to back on the device (a
multi-step round; 8 by default on CUDA). Printed: wall ms per engine step and per decode step (one token for every
sequence), the profiler's table sorted by CUDA time, and the sum of kernel time against the wall time. Kernels run
inside CUDA graph replays show up in the CUDA activity on recent CUDA/CUPTI; if the kernel sum is far below the
wall time while the GPU should be busy, they were not captured. ``--output-json`` gets the step figures and a
per-kernel summary (name, total us, calls, us per call, share of kernel time, us per decode step).

``--cpu-smoke``: writes a tiny Qwen3 config (2 layers, hidden 64, 4/2 heads, head_dim 16, vocab 352) to a temporary
folder and runs the same path with dummy weights on the CPU (device="cpu", float32, kv_cache_memory_bytes 64 MiB,
num_scheduler_steps 4 so multi-step rounds still run; no graphs there: the CPU runs eager).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from inferd import LLM, SamplingParams


def tiny_qwen3(path: Path) -> str:
    """A tiny Qwen3 config (the tests' tiny model's shapes); weights come from load_format="dummy"."""
    from transformers import Qwen3Config

    Qwen3Config(
        architectures=["Qwen3ForCausalLM"],
        vocab_size=352,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=2,
        bos_token_id=None,
        pad_token_id=0,
        torch_dtype="float32",
    ).save_pretrained(path)
    return str(path)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "model", nargs="?", default=None, help="model folder (e.g. benchmarks/model-configs/qwen3-0.6b)"
    )
    p.add_argument("--batch", type=int, default=None, help="concurrent requests (default 256; smoke 4)")
    p.add_argument(
        "--context", type=int, default=None, help="prompt tokens per request (default 800; smoke 24)"
    )
    p.add_argument("--rounds", type=int, default=5, help="engine steps timed, then as many profiled")
    p.add_argument("--warmup", type=int, default=3, help="engine steps after the prefills, before timing")
    p.add_argument("--rows", type=int, default=30, help="rows of the profiler table")
    p.add_argument("--max-model-len", type=int, default=None, help="default 4096 (smoke 256)")
    p.add_argument("--num-scheduler-steps", type=int, default=None, help="default: the engine's (8 on CUDA)")
    p.add_argument("--dtype", default=None, help="default bfloat16 (smoke float32)")
    p.add_argument("--output-json", default=None)
    p.add_argument(
        "--trace", default=None, help="also export a Chrome trace of the profiled steps to this file"
    )
    p.add_argument("--cpu-smoke", action="store_true", help="tiny random Qwen3 on the CPU")
    args = p.parse_args()
    if args.model is None and not args.cpu_smoke:
        p.error("a model folder is needed (or --cpu-smoke)")
    return args


def _attr(evt: Any, *names: str) -> float:
    for name in names:
        value = getattr(evt, name, None)
        if value is not None:
            return float(value)
    return 0.0


def main() -> None:
    args = parse_args()
    smoke = args.cpu_smoke
    batch = args.batch or (4 if smoke else 256)
    context = args.context or (24 if smoke else 800)
    max_model_len = args.max_model_len or (256 if smoke else 4096)
    engine_kwargs: dict[str, Any] = {
        "load_format": "dummy",
        "dtype": args.dtype or ("float32" if smoke else "bfloat16"),
        "max_model_len": max_model_len,
    }
    if args.num_scheduler_steps is not None:
        engine_kwargs["num_scheduler_steps"] = args.num_scheduler_steps
    tmp = None
    model = args.model
    if smoke:
        tmp = tempfile.TemporaryDirectory(prefix="graph-profile-tiny-qwen3-")
        model = model or tiny_qwen3(Path(tmp.name))
        engine_kwargs.update(device="cpu", kv_cache_memory_bytes=64 << 20)
        engine_kwargs.setdefault("num_scheduler_steps", 4)
    cuda = not smoke and torch.cuda.is_available()
    if not smoke and not cuda:
        raise SystemExit("graph_profile.py needs a CUDA GPU (or --cpu-smoke)")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    llm = LLM(model, **engine_kwargs)
    engine = llm.llm_engine
    core = engine.engine_core
    if not hasattr(core, "scheduler") or not hasattr(core, "executor"):
        raise SystemExit("needs the in-process engine core (no data/tensor parallelism)")
    sched_cfg = engine.config.scheduler_config
    vocab = engine.model_config.hf_config.vocab_size
    if context + 1 >= max_model_len:
        raise SystemExit(
            f"--context {context} leaves no room for output tokens at max_model_len {max_model_len}"
        )

    # Record what each engine step ran: device decode steps, sequences, tokens produced.
    step_log: list[dict[str, int]] = []
    # (With asynchronous scheduling an engine step also launches the next round: the log lists launched rounds.)
    original_launch = core.executor.launch_model
    original_step = core.step

    def launch(so: Any, num_steps: int = 1, continues: Any = None) -> Any:
        step_log.append(
            {
                "num_steps": num_steps,
                "num_seqs": len(so.num_scheduled_tokens),
                "scheduled_tokens": so.total_num_scheduled_tokens,
            }
        )
        return original_launch(so, num_steps, continues)

    def step() -> Any:
        out = original_step()
        if step_log:
            step_log[-1]["new_tokens"] = sum(len(o.new_token_ids) for o in out.outputs)
        return out

    core.executor.launch_model = launch  # type: ignore[method-assign]
    core.step = step  # type: ignore[method-assign]

    sp = SamplingParams(
        temperature=0.6, max_tokens=max_model_len - context - 1, ignore_eos=True, detokenize=False
    )
    for i in range(batch):
        rng = random.Random(i)
        engine.add_request(str(i), None, sp, prompt_token_ids=[rng.randrange(vocab) for _ in range(context)])
    start = time.perf_counter()
    prefill_steps = 0
    while core.scheduler.waiting or any(
        r.num_computed_tokens < r.num_prompt_tokens for r in core.scheduler.running
    ):
        engine.step()
        prefill_steps += 1
    sync()
    prefill_s = time.perf_counter() - start
    for _ in range(args.warmup):
        engine.step()
    sync()

    def timed_steps(n: int) -> tuple[list[float], list[dict[str, int]]]:
        walls = []
        first = len(step_log)
        for _ in range(n):
            t0 = time.perf_counter()
            engine.step()
            sync()
            walls.append((time.perf_counter() - t0) * 1e3)
        return walls, step_log[first:]

    plain_wall, plain_log = timed_steps(args.rounds)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        prof_wall, prof_log = timed_steps(args.rounds)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    running = len(core.scheduler.running)

    def summarize(walls: list[float], log: list[dict[str, int]]) -> dict[str, Any]:
        decode_steps = sum(e["num_steps"] for e in log)
        tokens = sum(e.get("new_tokens", 0) for e in log)
        total_ms = sum(walls)
        return {
            "engine_steps": len(walls),
            "wall_ms_per_engine_step": [round(w, 3) for w in walls],
            "median_wall_ms_per_engine_step": round(statistics.median(walls), 3),
            "num_steps_per_engine_step": [e["num_steps"] for e in log],
            "num_seqs_per_engine_step": [e["num_seqs"] for e in log],
            "decode_steps": decode_steps,
            "tokens": tokens,
            "wall_ms_per_decode_step": round(total_ms / max(1, decode_steps), 4),
            "output_tok_per_s": round(tokens / (total_ms / 1e3), 1) if total_ms else None,
        }

    plain = summarize(plain_wall, plain_log)
    profiled = summarize(prof_wall, prof_log)

    averages = prof.key_averages()
    if cuda:  # device-side events (kernels, memcpy/memset), without user-annotation ranges that span kernels
        kernels = [
            e
            for e in averages
            if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)
        ]

        def self_us(e: Any) -> float:
            return _attr(e, "self_device_time_total", "self_cuda_time_total")

    else:  # CPU smoke: the same summary over CPU ops' self time (there are no kernels)
        kernels = [e for e in averages if not getattr(e, "is_user_annotation", False)]

        def self_us(e: Any) -> float:
            return _attr(e, "self_cpu_time_total")

    kernels = [e for e in kernels if self_us(e) > 0]
    kernel_total = sum(self_us(e) for e in kernels)
    decode_steps = max(1, profiled["decode_steps"])
    summary = []
    for e in sorted(kernels, key=lambda e: -self_us(e)):
        total = self_us(e)
        summary.append(
            {
                "name": e.key,
                "total_us": round(total, 1),
                "calls": e.count,
                "us_per_call": round(total / max(1, e.count), 2),
                "share": round(total / kernel_total, 4) if kernel_total else None,
                "us_per_decode_step": round(total / decode_steps, 2),
            }
        )
    graph_launches = sum(e.count for e in averages if e.key in ("cudaGraphLaunch", "cuGraphLaunch"))
    kernel_launches = sum(
        e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
    )
    prof_wall_us = sum(prof_wall) * 1e3

    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"\n{device}, torch {torch.__version__}; model {model}; batch {batch}, context {context}; "
        f"num_scheduler_steps {sched_cfg.num_scheduler_steps}, CUDA graphs "
        f"{'off (eager)' if engine.config.enforce_eager or not cuda else 'on'}; "
        f"{prefill_steps} prefill steps took {prefill_s:.2f} s; {running} requests running at the end"
    )
    for name, s in (("unprofiled", plain), ("profiled", profiled)):
        print(
            f"{name:>10}: wall ms per engine step {s['wall_ms_per_engine_step']} "
            f"(decode steps per engine step {s['num_steps_per_engine_step']}, seqs {s['num_seqs_per_engine_step']}); "
            f"{s['wall_ms_per_decode_step']:.3f} ms per decode step, {s['tokens']} tokens, "
            f"{s['output_tok_per_s']} tok/s"
        )
    sort_by = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=70))
    print(f"{'kernels by total GPU time' if cuda else 'CPU ops by self CPU time'} (profiled steps):")
    print(f"{'kernel':<70} {'total us':>10} {'calls':>6} {'us/call':>8} {'share':>6} {'us/dstep':>9}")
    for k in summary[: args.rows]:
        share = f"{100 * k['share']:5.1f}%" if k["share"] is not None else "-"
        print(
            f"{k['name'][:70]:<70} {k['total_us']:>10.1f} {k['calls']:>6} {k['us_per_call']:>8.2f} {share:>6} "
            f"{k['us_per_decode_step']:>9.2f}"
        )
    coverage = kernel_total / prof_wall_us if prof_wall_us else 0.0
    print(
        f"{'kernel' if cuda else 'CPU op self'} time {kernel_total / 1e3:.2f} ms over {profiled['decode_steps']} decode steps "
        f"({kernel_total / decode_steps / 1e3:.3f} ms per decode step) vs wall {prof_wall_us / 1e3:.2f} ms "
        f"({profiled['wall_ms_per_decode_step']:.3f} ms per decode step): {100 * coverage:.1f}% of wall; "
        f"{len(kernels)} distinct {'device' if cuda else 'CPU'} ops; host launches: {graph_launches} graph, {kernel_launches} kernel"
    )
    if cuda and graph_launches and coverage < 0.3:
        print(
            "NOTE: kernel time is under 30% of the wall time although CUDA graphs were replayed: the graphs' "
            "kernels were probably not recorded by this CUDA/CUPTI; use kernel_profile.py (eager) instead."
        )
    result = {
        "device": device,
        "torch": torch.__version__,
        "model": model if not smoke else "tiny-qwen3 (cpu smoke)",
        "batch": batch,
        "context": context,
        "num_scheduler_steps": sched_cfg.num_scheduler_steps,
        "cuda_graphs": bool(cuda and not engine.config.enforce_eager),
        "prefill_steps": prefill_steps,
        "prefill_s": round(prefill_s, 3),
        "unprofiled": plain,
        "profiled": profiled,
        "kernel_total_us": round(kernel_total, 1),
        "kernel_us_per_decode_step": round(kernel_total / decode_steps, 2),
        "kernel_share_of_wall": round(coverage, 4),
        "graph_launches": graph_launches,
        "kernel_launches": kernel_launches,
        "kernels": summary,
    }
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.output_json}")
    llm.llm_engine.shutdown()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
