"""Per-step attention inputs, built by the model runner and read by every attention layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """A flat batch of ``num_seqs`` sequences, each contributing ``query_len`` new tokens (prefill chunks
    and decodes mixed). Query token ``i`` of sequence ``b`` sits at position ``seq_lens[b] - query_len_b + i``
    and attends causally to every cached token of its sequence up to and including itself.
    """

    slot_mapping: (
        torch.Tensor
    )  # [num_tokens] int64: KV-cache slot (block_id * block_size + offset) of each new token
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cumulative query lengths, starts at 0
    seq_lens: torch.Tensor  # [num_seqs] int32: context length of each sequence including its new tokens
    block_tables: torch.Tensor  # [num_seqs, max_num_blocks] int32: the KV blocks of each sequence, padded
    max_query_len: int
    max_seq_len: int
    num_actual_tokens: int  # tokens before padding (graph replays pad the batch)
    # Host copies of query_start_loc and seq_lens, for the pure-torch path (no device sync needed).
    query_start_loc_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None
    # Decode steps (CUDA graphs): [num_seqs] int32, the sequences longest first — the order in which the
    # attention kernel starts them (a launch hint; None: in batch order).
    seq_order: torch.Tensor | None = None
