"""CUDA graphs for decode steps: the whole forward (attention included) and the LM head, captured once per
batch-size bucket over static buffers, replayed with the batch padded up to its bucket."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from inferd import kernels
from inferd.kernels import pdl
from inferd.layers.attention_metadata import AttentionMetadata

logger = logging.getLogger(__name__)


def batch_size_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_num_seqs (which is always included)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    sizes.append(max_num_seqs)
    return sorted(set(sizes))


class CudaGraphRunner:
    """Replays captured decode graphs. Only for batches where every sequence computes exactly one token."""

    def __init__(
        self,
        model: torch.nn.Module,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.device = device
        self.block_size = block_size
        self.max_seq_len = max_model_len
        self.buckets = batch_size_buckets(max_num_seqs)
        max_bs = self.buckets[-1]
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_bs, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((max_bs,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((max_bs, max_blocks), dtype=torch.int32, device=device)
        # Pinned staging → one host-to-device copy per step: ids, positions, slots, seq_lens. Two sets, used in
        # turn: the host fills one for the next round while the device may still be copying from the other
        # (a round is launched before the previous one is waited for; the one before that has been).
        self._host = [torch.zeros((4, max_bs), dtype=torch.long, pin_memory=True) for _ in range(2)]
        self._dev = torch.zeros((4, max_bs), dtype=torch.long, device=device)
        self._host_block_tables = [
            torch.zeros((max_bs, max_blocks), dtype=torch.int32, pin_memory=True) for _ in range(2)
        ]
        self._turn = 0
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _metadata(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            num_actual_tokens=bs,
        )

    def forward_eagerly(self, bs: int) -> torch.Tensor:
        """The bucket's forward on its static buffers, launched as :meth:`capture` records it (PDL on for small
        buckets): run eagerly, it compiles the bucket's kernels (the warm-up before capture; also what
        :mod:`inferd.worker.kernel_warmup` runs)."""
        with pdl.active(bs <= pdl.MAX_GRAPH_BATCH):  # small steps: hide the gaps between ~300 kernels
            hidden = self.model(self.input_ids[:bs], self.positions[:bs], self._metadata(bs))
            return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = None
        for bs in reversed(self.buckets):  # largest first so smaller graphs reuse its memory
            self.forward_eagerly(bs)  # warm-up: Triton compilation, allocator
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.forward_eagerly(bs)
            if pool is None:
                pool = graph.pool()
            self.graphs[bs] = (graph, out)
        torch.cuda.synchronize(self.device)
        logger.info(
            "Captured %d CUDA graphs (batch sizes %s) in %.1f s",
            len(self.graphs),
            self.buckets,
            time.perf_counter() - start,
        )

    def can_run(self, num_seqs: int) -> bool:
        return bool(self.graphs) and num_seqs <= self.buckets[-1]

    def run(
        self,
        input_ids: np.ndarray,
        positions: np.ndarray,
        slots: np.ndarray,
        seq_lens: np.ndarray,
        block_tables: np.ndarray,
        input_ids_device: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode ``n`` sequences (one token each); returns logits [n, vocab]. ``input_ids_device`` [n], when given,
        replaces ``input_ids`` (tokens the device sampled and the host has not seen)."""
        n = len(input_ids)
        bs = next(b for b in self.buckets if b >= n)
        self._turn ^= 1
        staging, staging_bt = self._host[self._turn], self._host_block_tables[self._turn]
        host = staging.numpy()
        host[0, :n] = input_ids
        host[1, :n] = positions
        host[2, :n] = slots
        host[3, :n] = seq_lens
        # Padding rows: no KV write, a one-token context in the null block.
        host[0, n:bs] = 0
        host[1, n:bs] = 0
        host[2, n:bs] = -1
        host[3, n:bs] = 1
        self._dev[:, :bs].copy_(staging[:, :bs], non_blocking=True)
        self.input_ids[:bs].copy_(self._dev[0, :bs])
        if input_ids_device is not None:
            self.input_ids[:n].copy_(input_ids_device)
        self.positions[:bs].copy_(self._dev[1, :bs])
        self.slot_mapping[:bs].copy_(self._dev[2, :bs])
        self.seq_lens[:bs].copy_(self._dev[3, :bs])
        width = block_tables.shape[1]
        staging_bt.numpy()[:n, :width] = block_tables
        self.block_tables[:n, :width].copy_(staging_bt[:n, :width], non_blocking=True)
        self._n, self._bs = n, bs
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:n]

    def run_next(self, input_ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The next decode step of the batch last given to :meth:`run`: ``input_ids`` [n] and ``slots`` [n] on the
        device (the tokens just sampled and their KV slots), positions and context lengths one further."""
        n, bs = self._n, self._bs
        kernels.decode_advance(self.input_ids, self.positions, self.seq_lens, self.slot_mapping, input_ids, slots)
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:n]
