"""CUDA graphs for decode steps: the whole forward (attention included) and the LM head, captured once per
batch-size bucket over static buffers, replayed with the batch padded up to its bucket.

Small buckets are captured twice: for any context up to max_model_len, and for contexts up to
:data:`SHORT_CONTEXT`. The attention's launch (its split of each context over several programs, and the merge
kernel after them) is fixed at capture from the context bound; a small batch with long contexts needs the split to
fill the GPU, but with short ones the split only adds the merge kernel, so the short variant runs unsplit
(``triton_attention.UNSPLIT_MAX_SEQ_LEN``). A step (or a multi-step round) takes the short graph when its longest
context fits.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from inferd import kernels
from inferd.kernels import pdl
from inferd.layers.attention_metadata import AttentionMetadata

logger = logging.getLogger(__name__)

# Buckets of at most SHORT_CONTEXT_MAX_BATCH sequences (those whose attention splits at max_model_len with 8 KV heads
# on 132 SMs) also get graphs for contexts up to SHORT_CONTEXT tokens, where the attention runs unsplit.
SHORT_CONTEXT = 256
SHORT_CONTEXT_MAX_BATCH = 32


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
        self.seq_order = torch.arange(max_bs, dtype=torch.int32, device=device)  # longest context first
        # Pinned staging → one host-to-device copy per step: ids, positions, slots, seq_lens, order. Two sets, used
        # in turn: the host fills one for the next round while the device may still be copying from the other
        # (a round is launched before the previous one is waited for; the one before that has been).
        self._host = [torch.zeros((5, max_bs), dtype=torch.long, pin_memory=True) for _ in range(2)]
        self._dev = torch.zeros((5, max_bs), dtype=torch.long, device=device)
        self._host_block_tables = [
            torch.zeros((max_bs, max_blocks), dtype=torch.int32, pin_memory=True) for _ in range(2)
        ]
        self._turn = 0
        # (bucket, context bound) -> (graph, logits it writes)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def contexts(self, bs: int) -> list[int]:
        """The context bounds bucket ``bs`` is captured for, largest first."""
        if bs <= SHORT_CONTEXT_MAX_BATCH and SHORT_CONTEXT < self.max_seq_len:
            return [self.max_seq_len, SHORT_CONTEXT]
        return [self.max_seq_len]

    def _metadata(self, bs: int, max_seq_len: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs],
            max_query_len=1,
            max_seq_len=max_seq_len,
            num_actual_tokens=bs,
            seq_order=self.seq_order[:bs],
        )

    def forward_eagerly(self, bs: int, max_seq_len: int | None = None) -> torch.Tensor:
        """The bucket's forward on its static buffers for contexts up to ``max_seq_len`` (default: any), launched
        as :meth:`capture` records it (PDL on for small buckets): run eagerly, it compiles the bucket's kernels
        (the warm-up before capture; also what :mod:`inferd.worker.kernel_warmup` runs)."""
        metadata = self._metadata(bs, max_seq_len or self.max_seq_len)
        with pdl.active(bs <= pdl.MAX_GRAPH_BATCH):  # small steps: hide the gaps between ~300 kernels
            hidden = self.model(self.input_ids[:bs], self.positions[:bs], metadata)
            return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = None
        for bs in reversed(self.buckets):  # largest first so smaller graphs reuse its memory
            for ctx in self.contexts(bs):
                self.forward_eagerly(bs, ctx)  # warm-up: Triton compilation, allocator
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self.forward_eagerly(bs, ctx)
                if pool is None:
                    pool = graph.pool()
                self.graphs[(bs, ctx)] = (graph, out)
        torch.cuda.synchronize(self.device)
        short = [bs for bs in self.buckets if SHORT_CONTEXT in self.contexts(bs)]
        logger.info(
            "Captured %d CUDA graphs (batch sizes %s%s) in %.1f s",
            len(self.graphs),
            self.buckets,
            f"; {short} also for contexts up to {SHORT_CONTEXT}" if short else "",
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
        max_seq_len: int | None = None,
    ) -> torch.Tensor:
        """Decode ``n`` sequences (one token each); returns logits [n, vocab]. ``input_ids_device`` [n], when given,
        replaces ``input_ids`` (tokens the device sampled and the host has not seen). ``max_seq_len`` bounds the
        context lengths of this step and of the :meth:`run_next` steps that follow it (default: the longest of
        ``seq_lens``); it picks the graph."""
        n = len(input_ids)
        bs = next(b for b in self.buckets if b >= n)
        bound = int(seq_lens.max()) if max_seq_len is None else max_seq_len
        ctx = min((c for c in self.contexts(bs) if c >= bound), default=self.max_seq_len)
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
        # Attention starts the longest contexts first (the order holds for the run_next steps: all grow by one).
        host[4, :n] = np.argsort(-seq_lens, kind="stable")
        host[4, n:bs] = np.arange(n, bs)
        self._dev[:, :bs].copy_(staging[:, :bs], non_blocking=True)
        self.input_ids[:bs].copy_(self._dev[0, :bs])
        if input_ids_device is not None:
            self.input_ids[:n].copy_(input_ids_device)
        self.positions[:bs].copy_(self._dev[1, :bs])
        self.slot_mapping[:bs].copy_(self._dev[2, :bs])
        self.seq_lens[:bs].copy_(self._dev[3, :bs])
        self.seq_order[:bs].copy_(self._dev[4, :bs])
        width = block_tables.shape[1]
        staging_bt.numpy()[:n, :width] = block_tables
        self.block_tables[:n, :width].copy_(staging_bt[:n, :width], non_blocking=True)
        self._n, self._key = n, (bs, ctx)
        graph, out = self.graphs[self._key]
        graph.replay()
        return out[: self._n]

    def run_next(self, input_ids: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The next decode step of the batch last given to :meth:`run`: ``input_ids`` [n] and ``slots`` [n] on the
        device (the tokens just sampled and their KV slots), positions and context lengths one further."""
        kernels.decode_advance(
            self.input_ids, self.positions, self.seq_lens, self.slot_mapping, input_ids, slots
        )
        graph, out = self.graphs[self._key]
        graph.replay()
        return out[: self._n]
