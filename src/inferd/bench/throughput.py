"""`inferd bench throughput`: offline generation throughput (nano-vllm's workload by default)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from inferd.bench.datasets import random_requests


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("workload")
    g.add_argument("--num-prompts", type=int, default=256, help="number of requests (default 256)")
    g.add_argument(
        "--input-len", type=int, default=None, help="prompt tokens; default uniform in [100, 1024]"
    )
    g.add_argument(
        "--output-len", type=int, default=None, help="output tokens; default uniform in [100, 1024]"
    )
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    g.add_argument("--dataset-seed", type=int, default=0, help="seed of the random workload (default 0)")
    g.add_argument("--output-json", default=None, help="also write the result to this file")


def run(args: argparse.Namespace, engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    from inferd import LLM, SamplingParams

    requests = random_requests(args.num_prompts, args.input_len, args.output_len, seed=args.dataset_seed)
    start = time.perf_counter()
    llm = LLM(**engine_kwargs)
    startup = time.perf_counter() - start
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    prompts = [{"prompt_token_ids": [t % vocab for t in r.prompt_token_ids]} for r in requests]
    params = [
        SamplingParams(
            temperature=args.temperature, ignore_eos=True, max_tokens=r.max_tokens, detokenize=False
        )
        for r in requests
    ]
    warm = SamplingParams(max_tokens=8, detokenize=False, ignore_eos=True)
    replicas = int(engine_kwargs.get("data_parallel_size") or 1)  # one warm-up request lands on each replica
    llm.generate([{"prompt_token_ids": [1, 2, 3]}] * replicas, warm, use_tqdm=False)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result = {
        "benchmark": "throughput",
        "model": engine_kwargs.get("model"),
        "num_prompts": len(prompts),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "seconds": round(elapsed, 3),
        "output_tok_per_s": round(output_tokens / elapsed, 1),
        "total_tok_per_s": round((prompt_tokens + output_tokens) / elapsed, 1),
        "requests_per_s": round(len(prompts) / elapsed, 2),
        "startup_s": round(startup, 1),
    }
    _emit(result, args.output_json)
    print(
        f"throughput: {result['output_tok_per_s']} output tok/s, {result['total_tok_per_s']} total tok/s, "
        f"{result['num_prompts']} requests in {result['seconds']} s"
    )
    return result


def _emit(result: dict[str, Any], path: str | None) -> None:
    text = json.dumps(result)
    print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
