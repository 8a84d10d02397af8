"""GPU time per kernel over a few engine steps (torch.profiler, eager mode so every kernel shows).

python benchmarks/kernel_profile.py benchmarks/model-configs/qwen3-0.6b --batch 256 --context 800   # decode steps
python benchmarks/kernel_profile.py benchmarks/model-configs/qwen3-0.6b --prefill --steps 4       # nano-workload
                                                                              prefill steps (8192-token chunks)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from inferd import LLM, SamplingParams
from inferd.bench.datasets import random_requests


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--context", type=int, default=800)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prefill", action="store_true", help="profile the nano workload's first (prefill) steps")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    llm = LLM(
        args.model,
        load_format="dummy",
        dtype="bfloat16",
        max_model_len=4096,
        enforce_eager=True,
        num_scheduler_steps=1,
    )
    engine = llm.llm_engine
    vocab = engine.model_config.hf_config.vocab_size
    if args.prefill:
        warm = SamplingParams(temperature=0.6, max_tokens=2, ignore_eos=True, detokenize=False)
        llm.generate([{"prompt_token_ids": list(range(1, 600))}] * 16, warm, use_tqdm=False)  # compile kernels
        for i, r in enumerate(random_requests(256, None, None, seed=0)):
            sp = SamplingParams(temperature=0.6, max_tokens=r.max_tokens, ignore_eos=True, detokenize=False)
            engine.add_request(str(i), None, sp, prompt_token_ids=[t % vocab for t in r.prompt_token_ids])
    else:
        sp = SamplingParams(temperature=0.6, max_tokens=1000, ignore_eos=True, detokenize=False)
        for i in range(args.batch):
            engine.add_request(
                str(i), None, sp, prompt_token_ids=[(i * 7 + j) % 30000 for j in range(args.context)]
            )
        while engine.engine_core.scheduler.waiting or any(
            r.num_computed_tokens < r.num_prompt_tokens for r in engine.engine_core.scheduler.running
        ):
            engine.step()
        for _ in range(3):
            engine.step()
    torch.cuda.synchronize()
    wall = []
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            wall.append(round((time.perf_counter() - start) * 1e3, 2))
    print("step wall ms (profiled):", wall)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    if args.prefill:  # the same steps again without the profiler
        for _ in range(args.steps):
            start = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            wall.append(round((time.perf_counter() - start) * 1e3, 2))
        print("step wall ms (all):", wall)


if __name__ == "__main__":
    main()
