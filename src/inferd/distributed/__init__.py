"""Tensor-parallel process group and collectives (see :mod:`inferd.distributed.parallel_state`)."""

from __future__ import annotations

from inferd.distributed.parallel_state import (
    destroy_tensor_parallel,
    divide_for_tp,
    init_tensor_parallel,
    kv_head_start,
    local_num_heads,
    local_num_kv_heads,
    tp_all_gather,
    tp_all_reduce,
    tp_all_reduce_add_rms_norm,
    tp_broadcast,
    tp_min_int,
    tp_rank,
    tp_size,
)

__all__ = [
    "destroy_tensor_parallel",
    "divide_for_tp",
    "init_tensor_parallel",
    "kv_head_start",
    "local_num_heads",
    "local_num_kv_heads",
    "tp_all_gather",
    "tp_all_reduce",
    "tp_all_reduce_add_rms_norm",
    "tp_broadcast",
    "tp_min_int",
    "tp_rank",
    "tp_size",
]
