"""Benchmark workloads: random token prompts, reproducible from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class BenchRequest:
    prompt_token_ids: list[int]
    max_tokens: int


def random_requests(
    num_prompts: int,
    input_len: int | None,
    output_len: int | None,
    seed: int = 0,
    min_len: int = 100,
    max_len: int = 1024,
    max_token_id: int = 10000,
) -> list[BenchRequest]:
    """nano-vllm's workload when lengths are None: prompt and output lengths uniform in [min_len, max_len],
    token ids uniform in [0, max_token_id]; fixed lengths otherwise. Same seed → same requests."""
    rng = random.Random(seed)
    # All prompts first, then all output lengths: the draw order of nano-vllm's bench.py, so the same seed gives
    # the same 256 requests (142,827 prompt and 133,966 output tokens for the default workload).
    prompts = [
        [
            rng.randint(0, max_token_id)
            for _ in range(input_len if input_len is not None else rng.randint(min_len, max_len))
        ]
        for _ in range(num_prompts)
    ]
    outputs = [
        output_len if output_len is not None else rng.randint(min_len, max_len) for _ in range(num_prompts)
    ]
    return [BenchRequest(p, n) for p, n in zip(prompts, outputs)]
