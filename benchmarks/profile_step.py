"""Where the host time of an engine step goes (cProfile), for batch-1 decode and for the throughput workload.

python benchmarks/profile_step.py benchmarks/model-configs/qwen3-0.6b [--num-prompts 64]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from inferd import LLM, SamplingParams
from inferd.bench.datasets import random_requests


def profile(label: str, fn) -> None:  # type: ignore[no-untyped-def]
    pr = cProfile.Profile()
    start = time.perf_counter()
    pr.enable()
    fn()
    pr.disable()
    elapsed = time.perf_counter() - start
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(22)
    print(f"===== {label}: {elapsed:.3f} s")
    print("\n".join(line[:160] for line in buf.getvalue().splitlines()[6:34]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--num-prompts", type=int, default=64)
    args = p.parse_args()
    llm = LLM(args.model, load_format="dummy", dtype="bfloat16", max_model_len=4096)
    one = [{"prompt_token_ids": list(range(100, 132))}]
    sp = SamplingParams(temperature=0, max_tokens=256, ignore_eos=True, detokenize=False)
    llm.generate(one, sp, use_tqdm=False)
    profile("batch 1, 256 tokens", lambda: llm.generate(one, sp, use_tqdm=False))
    reqs = random_requests(args.num_prompts, None, None, seed=0)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    sps = [
        SamplingParams(temperature=0.6, ignore_eos=True, max_tokens=r.max_tokens, detokenize=False)
        for r in reqs
    ]
    profile(
        f"throughput workload, {args.num_prompts} requests",
        lambda: llm.generate(prompts, sps, use_tqdm=False),
    )


if __name__ == "__main__":
    main()
