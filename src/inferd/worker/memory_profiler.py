"""Sizing the KV cache on a GPU: a profile run of the largest step measures peak activation memory, and the KV
pool gets what ``gpu_memory_utilization`` leaves (clamped to the memory actually free)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from inferd.layers.attention import bind_kv_caches
from inferd.sampling_params import SamplingParams
from inferd.worker.sampling_batch import SamplingBatch

if TYPE_CHECKING:
    from inferd.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


@torch.inference_mode()
def profile_num_gpu_blocks(runner: ModelRunner, block_bytes: int) -> int:
    """KV blocks for ``gpu_memory_utilization × total`` minus this engine's weights and peak activations
    (as vLLM counts it), clamped to the memory actually free (other processes may hold some)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runner.device)
    num_tokens = runner.scheduler_config.max_num_batched_tokens
    num_seqs = max(1, min(runner.scheduler_config.max_num_seqs, num_tokens))
    tmp_blocks = num_tokens // runner.block_size + num_seqs + 1
    run_dummy_batch(runner, num_tokens, num_seqs, tmp_blocks)
    torch.cuda.synchronize(runner.device)
    peak = torch.cuda.max_memory_allocated(runner.device)
    runner.kv_caches = []
    bind_kv_caches(runner.model, [])
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(runner.device)
    allowed = total * runner.cache_config.gpu_memory_utilization
    activations = peak - torch.cuda.memory_allocated(runner.device)  # transient; KV must leave room for it
    budget = min(allowed - peak, free - activations - (256 << 20))
    num_blocks = int(budget // block_bytes)
    logger.info(
        "Memory profile: total %.1f GiB, free %.1f GiB, weights+peak activations %.2f GiB, KV budget %.2f GiB",
        total / 2**30,
        free / 2**30,
        peak / 2**30,
        max(budget, 0) / 2**30,
    )
    if allowed - peak > budget:
        logger.warning(
            "Only %.1f GiB of the GPU are free (other processes hold the rest); the KV cache gets %.2f GiB "
            "instead of %.2f GiB.",
            free / 2**30,
            max(budget, 0) / 2**30,
            (allowed - peak) / 2**30,
        )
    if num_blocks < 2:
        raise ValueError(
            f"No room for a KV cache: this engine needs {peak / 2**30:.1f} GiB for weights and activations, "
            f"--gpu-memory-utilization allows {allowed / 2**30:.1f} GiB, and {free / 2**30:.1f} GiB of the GPU "
            "are free. Raise --gpu-memory-utilization, lower --max-num-batched-tokens, stop other processes on "
            "the GPU, or use a smaller model/dtype."
        )
    return num_blocks


def run_dummy_batch(runner: ModelRunner, num_tokens: int, num_seqs: int, num_blocks: int) -> None:
    """Prefills of ``num_tokens`` over ``num_seqs`` sequences in a temporary cache, then a top-k/top-p sample."""
    runner.initialize_kv_cache(num_blocks)
    per_seq = [num_tokens // num_seqs] * num_seqs
    per_seq[-1] += num_tokens - sum(per_seq)
    starts = np.concatenate([[0], np.cumsum(per_seq)])
    positions = np.concatenate([np.arange(n) for n in per_seq])
    max_blocks = -(-max(per_seq) // runner.block_size)
    block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    next_block = 1
    slots = np.empty(num_tokens, dtype=np.int64)
    for i, n in enumerate(per_seq):
        nb = -(-n // runner.block_size)
        block_tables[i, :nb] = np.arange(next_block, next_block + nb)
        next_block += nb
        pos = np.arange(n)
        slots[starts[i] : starts[i] + n] = block_tables[i, pos // runner.block_size] * runner.block_size + (
            pos % runner.block_size
        )
    meta = runner._make_metadata(slots, starts, np.array(per_seq), block_tables, max(per_seq), max(per_seq))
    input_ids = torch.zeros(num_tokens, dtype=torch.long, device=runner.device)
    hidden = runner.model(input_ids, torch.from_numpy(positions).to(runner.device), meta)
    logits = runner.model.compute_logits(hidden[:num_seqs])
    # Sample with top-k/top-p on so the profile includes the sampler's sort.
    batch = SamplingBatch(runner.vocab_size, runner.device)
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50)
    ids = [f"profile-{i}" for i in range(num_seqs)]
    for req_id in ids:
        batch.add_request(req_id, params, [0], [], None)
    runner.sampler(logits, batch.make_metadata(ids))
