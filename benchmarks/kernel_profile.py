"""GPU time per kernel over a few decode steps at a given batch (torch.profiler, eager mode so kernels show).

python benchmarks/kernel_profile.py benchmarks/model-configs/qwen3-0.6b --batch 256 --context 800
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from inferd import LLM, SamplingParams


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--context", type=int, default=800)
    p.add_argument("--steps", type=int, default=5)
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
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
