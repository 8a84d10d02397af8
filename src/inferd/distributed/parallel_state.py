"""The tensor-parallel process group: one per engine replica, every rank of it in its own process.

Before :func:`init_tensor_parallel` runs (or after :func:`destroy_tensor_parallel`) the process is a group of
one: ``tp_rank() == 0``, ``tp_size() == 1`` and every collective returns its input without any
``torch.distributed`` call. All collectives act in place or into a freshly allocated output on the current
stream, so on NCCL they can be captured in a CUDA graph. On CUDA, small all-reduces go through a one-shot
all-reduce in symmetric memory (:mod:`inferd.distributed.custom_all_reduce`) when it passed its self-test.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from inferd import kernels

if TYPE_CHECKING:
    from inferd.distributed.custom_all_reduce import CustomAllReduce

logger = logging.getLogger(__name__)

_TP_RANK = 0
_TP_SIZE = 1
_CUSTOM_AR: CustomAllReduce | None = None


def init_tensor_parallel(
    rank: int, world_size: int, init_method: str, device: torch.device, custom_all_reduce: bool = True
) -> None:
    """Join the TP group as ``rank`` of ``world_size``; NCCL when ``device`` is CUDA, gloo otherwise.

    ``init_method`` is the caller's rendezvous (e.g. ``"file:///tmp/run-xyz/store"``). Calling it again with
    the same rank and size is a no-op; with another raises ``RuntimeError``. On CUDA the device becomes the
    current one and a warm-up all-reduce creates the NCCL communicator, so that no communicator is created
    during a CUDA-graph capture. With ``custom_all_reduce`` (CUDA, more than one rank) every rank then builds
    the symmetric-memory all-reduce, which checks itself and falls back to NCCL on any failure.
    """
    global _TP_RANK, _TP_SIZE, _CUSTOM_AR
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a tensor-parallel group of {world_size}.")
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"torch.distributed is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}; cannot join as rank {rank} of {world_size}."
            )
        _TP_RANK, _TP_SIZE = rank, world_size
        return
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl", init_method=init_method, rank=rank, world_size=world_size, device_id=device
        )
    else:
        dist.init_process_group(backend="gloo", init_method=init_method, rank=rank, world_size=world_size)
    _TP_RANK, _TP_SIZE = rank, world_size
    if device.type == "cuda":
        warm_up = torch.zeros(1, device=device)
        dist.all_reduce(warm_up)
        torch.cuda.synchronize(device)
        if custom_all_reduce and world_size > 1:
            _CUSTOM_AR = _build_custom_all_reduce(device)


def _build_custom_all_reduce(device: torch.device) -> CustomAllReduce | None:
    from inferd.distributed.custom_all_reduce import CustomAllReduce, CustomAllReduceHung

    try:
        car = CustomAllReduce(device)
    except CustomAllReduceHung:
        raise
    except Exception as e:  # its own failures are agreed on and logged inside; this is anything else
        logger.warning("Custom all-reduce off, all-reduces use NCCL (%s: %s).", type(e).__name__, e)
        return None
    return car if car.enabled else None


def destroy_tensor_parallel() -> None:
    """Leave the group (destroying the default process group); safe to call when not initialised."""
    global _TP_RANK, _TP_SIZE, _CUSTOM_AR
    if _CUSTOM_AR is not None:
        try:
            _CUSTOM_AR.close()
        except Exception as e:  # shutting down: never fail here
            logger.debug("Closing the custom all-reduce failed: %s", e)
        _CUSTOM_AR = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _TP_RANK, _TP_SIZE = 0, 1


def tp_rank() -> int:
    """This process's rank in the TP group (0 when not initialised)."""
    return _TP_RANK


def tp_size() -> int:
    """The number of ranks in the TP group (1 when not initialised)."""
    return _TP_SIZE


def tp_custom_all_reduce() -> CustomAllReduce | None:
    """The symmetric-memory all-reduce when it is on (it passed its self-test on every rank), else ``None``."""
    return _CUSTOM_AR


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks. Use the return value: small CUDA tensors are summed into a new tensor
    (one-shot all-reduce in symmetric memory, ``x`` unchanged), the rest in place by NCCL/gloo (returns ``x``)."""
    if _TP_SIZE == 1:
        return x
    car = _CUSTOM_AR
    if car is not None and car.should_use(x):
        return car.all_reduce(x)
    dist.all_reduce(x)
    return x


def tp_all_reduce_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.fused_add_rms_norm(tp_all_reduce(x), residual, weight, eps)``: ``(normed, new residual)``.

    Small CUDA batches run it as one kernel (the custom all-reduce's fused path, when it passed its self-tests);
    everything else all-reduces, then norms."""
    if _TP_SIZE > 1:
        car = _CUSTOM_AR
        if car is not None and car.should_fuse(x, residual):
            return car.all_reduce_add_rms_norm(x, residual, weight, eps)
        x = tp_all_reduce(x)
    return kernels.fused_add_rms_norm(x, residual, weight, eps)


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every rank's ``x`` (same shape on all) concatenated along ``dim`` in rank order, as a new tensor."""
    if _TP_SIZE == 1:
        return x
    dim = dim % x.dim()
    x = x.contiguous()
    out = torch.empty((_TP_SIZE * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x)  # [tp * x.shape[0], ...]
    if dim == 0:
        return out
    stacked = out.view(_TP_SIZE, *x.shape).movedim(0, dim)  # [..., tp, x.shape[dim], ...]
    return stacked.reshape(*x.shape[:dim], _TP_SIZE * x.shape[dim], *x.shape[dim + 1 :])


def tp_broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` in place with rank ``src``'s ``x``; returns ``x``."""
    if _TP_SIZE > 1:
        dist.broadcast(x, src=src)
    return x


def tp_min_int(value: int, device: torch.device) -> int:
    """The smallest ``value`` over the ranks (``device`` must suit the backend: CUDA for NCCL)."""
    if _TP_SIZE == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def divide_for_tp(total: int, what: str, tp: int | None = None) -> int:
    """``total // tp`` (``tp`` defaults to :func:`tp_size`); ``ValueError`` naming ``what`` unless it divides."""
    tp = _TP_SIZE if tp is None else tp
    if total % tp:
        raise ValueError(
            f"{what} ({total}) is not divisible by --tensor-parallel-size {tp}; "
            f"choose a tensor-parallel size that divides {total}."
        )
    return total // tp


def local_num_heads(total_heads: int, tp: int | None = None) -> int:
    """Attention (query) heads on each rank: ``total_heads // tp``; ``ValueError`` unless ``tp`` divides it."""
    return divide_for_tp(total_heads, "num_attention_heads", tp)


def local_num_kv_heads(total_kv_heads: int, tp: int | None = None) -> int:
    """KV heads on each rank: ``total_kv_heads // tp`` when ``total_kv_heads >= tp`` (must divide), else 1
    (each KV head replicated on ``tp // total_kv_heads`` ranks; ``tp`` must be a multiple of ``total_kv_heads``).
    """
    tp = _TP_SIZE if tp is None else tp
    if total_kv_heads >= tp:
        return divide_for_tp(total_kv_heads, "num_key_value_heads", tp)
    if tp % total_kv_heads:
        raise ValueError(
            f"--tensor-parallel-size {tp} is neither a divisor nor a multiple of num_key_value_heads "
            f"({total_kv_heads}); choose a tensor-parallel size that divides {total_kv_heads} or is a multiple of it."
        )
    return 1


def kv_head_start(total_kv_heads: int, rank: int, tp: int) -> int:
    """The first (global) KV head that ``rank`` holds; ranks ``r`` share head ``r // (tp // total)`` when
    KV heads are replicated."""
    if total_kv_heads >= tp:
        return rank * (total_kv_heads // tp)
    return rank // (tp // total_kv_heads)
