"""The HF transformers peer, measured in the same run as inferd: `generate_batch` (continuous batching, paged
attention) for throughput and `generate` with a static cache for batch-1 latency. Dummy (random) weights from a
config.json folder, bf16, on the GPU.

    python benchmarks/hf_peer.py throughput benchmarks/model-configs/qwen3-0.6b --num-prompts 64
    python benchmarks/hf_peer.py latency benchmarks/model-configs/qwen3-0.6b
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from inferd.bench.datasets import random_requests


def load(config_dir: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    with torch.device("cuda"):  # random init on the GPU: seconds instead of a minute on the CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    return model


def throughput(args: argparse.Namespace) -> dict:
    from transformers import GenerationConfig

    model = load(args.config)
    reqs = random_requests(args.num_prompts, None, None, seed=0)
    inputs = [r.prompt_token_ids for r in reqs]
    max_new = round(statistics.fmean(r.max_tokens for r in reqs))  # generate_batch takes one max_new_tokens
    gen = GenerationConfig(
        max_new_tokens=max_new, do_sample=True, temperature=0.6, eos_token_id=-1, pad_token_id=0
    )
    model.generate_batch(
        inputs=inputs[:4],
        generation_config=GenerationConfig(max_new_tokens=8, eos_token_id=-1, pad_token_id=0),
    )
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = model.generate_batch(inputs=inputs, generation_config=gen)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    produced = sum(len(o.generated_tokens) for o in outs.values())
    return {
        "peer": "transformers generate_batch",
        "num_prompts": len(inputs),
        "max_new_tokens": max_new,
        "output_tokens": produced,
        "seconds": round(elapsed, 2),
        "output_tok_per_s": round(produced / elapsed, 1),
    }


def latency(args: argparse.Namespace) -> dict:
    model = load(args.config)
    x = torch.arange(100, 132, device="cuda")[None]

    def run(n: int) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            cache_implementation="static",
            pad_token_id=0,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(2):
        run(args.output_len)
    full = statistics.median(run(args.output_len) for _ in range(args.num_iters))
    one = statistics.median(run(1) for _ in range(args.num_iters))
    return {
        "peer": "transformers generate (static cache)",
        "output_len": args.output_len,
        "ms_per_output_token": round((full - one) / (args.output_len - 1) * 1000, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["throughput", "latency"])
    p.add_argument("config")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--num-iters", type=int, default=5)
    args = p.parse_args()
    result = throughput(args) if args.mode == "throughput" else latency(args)
    result["transformers"] = __import__("transformers").__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
