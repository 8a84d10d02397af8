"""`inferd bench latency`: milliseconds per output token at batch 1 and batch N (decode only: prefill excluded)."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from inferd.bench.throughput import _emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload")
    g.add_argument("--input-len", type=int, default=32, help="prompt tokens (default 32)")
    g.add_argument("--output-len", type=int, default=256, help="output tokens (default 256)")
    g.add_argument("--batch-size", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    g.add_argument("--num-iters", type=int, default=7, help="timed repetitions; the median is reported")
    g.add_argument("--num-iters-warmup", type=int, default=3)
    g.add_argument("--output-json", default=None, help="also write the result to this file")


def run(args: argparse.Namespace, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    from inferd import LLM, SamplingParams

    llm = LLM(**engine_kwargs)
    full = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=args.output_len, detokenize=False)
    one = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=1, detokenize=False)
    result: dict[str, Any] = {
        "benchmark": "latency",
        "model": engine_kwargs.get("model"),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "batches": {},
    }
    for bs in args.batch_size:
        prompts = [
            {"prompt_token_ids": [100 + (i + b) % 1000 for i in range(args.input_len)]} for b in range(bs)
        ]

        def timed(params: SamplingParams, prompts: list[dict[str, list[int]]] = prompts) -> float:
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            return time.perf_counter() - start

        for _ in range(args.num_iters_warmup):
            timed(full)
            timed(one)
        t_full = statistics.median(timed(full) for _ in range(args.num_iters))
        t_one = statistics.median(timed(one) for _ in range(args.num_iters))
        ms = (t_full - t_one) / max(args.output_len - 1, 1) * 1000
        result["batches"][str(bs)] = {
            "median_s": round(t_full, 4),
            "prefill_s": round(t_one, 4),
            "ms_per_output_token": round(ms, 3),
            "output_tok_per_s": round(bs * 1000 / ms, 1) if ms > 0 else None,
        }
    _emit(result, args.output_json)
    summary = ", ".join(
        f"batch {b}: {v['ms_per_output_token']} ms/token" for b, v in result["batches"].items()
    )
    print(f"latency: {summary}")
    return result
