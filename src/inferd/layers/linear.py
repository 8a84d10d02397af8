"""Linear layers. Every weight-shape rule (fusing and tensor-parallel sharding) lives in their weight loaders,
which the model's ``load_weights`` calls as ``param.weight_loader(param, loaded_weight[, shard_id])``.

Loaders always receive the FULL checkpoint tensor (HF shapes) and copy only this rank's slice; a tensor whose
shape differs from the full expected one raises ``ValueError``. The layers read ``tp_rank()``/``tp_size()`` at
construction; at size 1 they hold the whole weights and make no collective call.

A fused parameter carries ``param.shard_ids``: the shard ids it must receive before it counts as loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from inferd import kernels
from inferd.distributed.parallel_state import (
    divide_for_tp,
    kv_head_start,
    local_num_heads,
    local_num_kv_heads,
    tp_all_reduce,
    tp_rank,
    tp_size,
)


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """Copy a checkpoint tensor of exactly ``param``'s shape into it (casting dtype/device).

    Raises ``ValueError`` on a shape mismatch (the checkpoint does not fit the model config).
    """
    check_shape(loaded_weight, tuple(param.shape))
    param.data.copy_(loaded_weight)


def check_shape(loaded_weight: torch.Tensor, full_shape: tuple[int, ...], what: str | None = None) -> None:
    """Raise ``ValueError`` unless the checkpoint tensor has ``full_shape`` (the whole, unsharded shape)."""
    if tuple(loaded_weight.shape) != tuple(full_shape):
        for_what = f" for {what}" if what else ""
        raise ValueError(
            f"checkpoint tensor{for_what} has shape {tuple(loaded_weight.shape)} but the model expects "
            f"{tuple(full_shape)}; check that config.json matches the weights."
        )


def load_slice(
    dst: torch.Tensor,
    loaded_weight: torch.Tensor,
    full_shape: tuple[int, ...],
    dim: int,
    start: int,
    what: str | None = None,
) -> None:
    """Check that ``loaded_weight`` has ``full_shape``, then copy its slice ``[start, start + dst.shape[dim])``
    along ``dim`` into ``dst``."""
    check_shape(loaded_weight, full_shape, what)
    dst.copy_(loaded_weight.narrow(dim, start, dst.shape[dim]))


class LinearBase(nn.Module):
    """``y = x @ weight.T + bias`` with weight [output_size, input_size] held whole (replicated on every rank),
    built on the default device/dtype."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        *,
        weight_shape: tuple[int, int] | None = None,
        bias_size: int | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_rank = tp_rank()
        self.tp_size = tp_size()
        self.weight = nn.Parameter(
            torch.empty(weight_shape or (output_size, input_size)), requires_grad=False
        )
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = nn.Parameter(torch.empty(bias_size or output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, input_size] -> [num_tokens, output_size]."""
        return kernels.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, "
            f"local_weight={tuple(self.weight.shape)}"
        )


class ColumnLinear(LinearBase):
    """Linear layer with its output dim split over the TP ranks: weight [output_size / tp, input_size], bias
    [output_size / tp]. ``forward`` returns this rank's output slice [num_tokens, output_size / tp]."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        output_size_per_partition: int | None = None,
    ) -> None:
        local = output_size_per_partition
        if local is None:
            local = divide_for_tp(output_size, f"{type(self).__name__} output size")
        super().__init__(input_size, output_size, bias, weight_shape=(local, input_size), bias_size=local)
        self.output_size_per_partition = local

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        full = (self.output_size, *param.shape[1:])
        load_slice(param.data, loaded_weight, full, 0, self.tp_rank * self.output_size_per_partition)


class RowLinear(LinearBase):
    """Linear layer with its input dim split over the TP ranks: weight [output_size, input_size / tp], bias
    [output_size] whole. ``forward`` takes this rank's input slice [num_tokens, input_size / tp] and returns
    the full output [num_tokens, output_size] on every rank (partial products summed by an all-reduce, then
    the bias added once)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        local = divide_for_tp(input_size, f"{type(self).__name__} input size")
        super().__init__(input_size, output_size, bias, weight_shape=(output_size, local))
        self.input_size_per_partition = local

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        if param is self.bias:
            default_weight_loader(param, loaded_weight)
            return
        start = self.tp_rank * self.input_size_per_partition
        load_slice(param.data, loaded_weight, (self.output_size, self.input_size), 1, start)

    @property
    def defers_reduce(self) -> bool:
        """Whether ``forward(x, reduce=False)`` returns this rank's partial sums (TP > 1 and no bias): the caller
        then all-reduces them, e.g. fused with the next norm (``RMSNorm(..., reduce=True)``)."""
        return self.tp_size > 1 and self.bias is None

    def forward(self, x: torch.Tensor, *, silu_mul_input: bool = False, reduce: bool = True) -> torch.Tensor:
        """x: [num_tokens, input_size / tp] -> [num_tokens, output_size].

        With ``silu_mul_input`` x is the un-activated gated-MLP input [num_tokens, 2 * input_size / tp], this rank's
        ``[gate_local | up_local]`` (a :class:`MergedGateUpLinear` output), and the local matmul applies
        ``silu(gate) * up`` first, fused into one kernel (``kernels.silu_and_mul_linear``). With ``reduce=False``
        and :attr:`defers_reduce`, the result is this rank's partial product, not yet summed over the ranks.
        """
        matmul = kernels.silu_and_mul_linear if silu_mul_input else kernels.linear
        if self.tp_size == 1:
            return matmul(x, self.weight, self.bias)
        if not reduce and self.defers_reduce:
            return matmul(x, self.weight)  # [num_tokens, output_size] partial sums
        out = tp_all_reduce(matmul(x, self.weight))  # [num_tokens, output_size]
        return out if self.bias is None else out + self.bias


class QKVLinear(ColumnLinear):
    """Fused q/k/v projection over this rank's heads: weight [(num_heads + 2 * num_kv_heads) * head_dim,
    hidden_size], rows q | k | v, where ``num_heads``/``num_kv_heads`` are the LOCAL head counts
    (``total_num_heads // tp`` query heads; KV heads split the same way, or one KV head per rank, rank ``r``
    holding head ``r // (tp // total_num_kv_heads)``, when there are fewer KV heads than ranks).
    ``q_size``/``kv_size`` are local sizes.

    Its loader takes shard_id ``"q"``, ``"k"`` or ``"v"`` for HF's separate full q_proj/k_proj/v_proj tensors,
    or ``None`` for a full fused q|k|v tensor.
    """

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False
    ) -> None:
        tp = tp_size()
        self.head_dim = head_dim
        self.total_num_heads = num_heads
        self.total_num_kv_heads = num_kv_heads
        self.num_heads = local_num_heads(num_heads, tp)
        self.num_kv_heads = local_num_kv_heads(num_kv_heads, tp)
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        full_size = (num_heads + 2 * num_kv_heads) * head_dim
        super().__init__(
            hidden_size, full_size, bias, output_size_per_partition=self.q_size + 2 * self.kv_size
        )
        self._kv_start = kv_head_start(num_kv_heads, self.tp_rank, tp) * head_dim
        for param in self.parameters():
            param.shard_ids = ("q", "k", "v")  # type: ignore[attr-defined]

    def weight_loader(  # type: ignore[override]
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | None = None
    ) -> None:
        full_q = self.total_num_heads * self.head_dim
        full_kv = self.total_num_kv_heads * self.head_dim
        if shard_id is None:
            check_shape(loaded_weight, (self.output_size, *param.shape[1:]))
            q, k, v = loaded_weight.split([full_q, full_kv, full_kv], dim=0)
            for sid, part in (("q", q), ("k", k), ("v", v)):
                self.weight_loader(param, part, sid)
            return
        shards = {  # shard id -> (rows in param, full rows in the checkpoint, first checkpoint row)
            "q": (slice(0, self.q_size), full_q, self.tp_rank * self.q_size),
            "k": (slice(self.q_size, self.q_size + self.kv_size), full_kv, self._kv_start),
            "v": (slice(self.q_size + self.kv_size, None), full_kv, self._kv_start),
        }
        if shard_id not in shards:
            raise ValueError(f"QKVLinear shard_id must be 'q', 'k' or 'v'; got {shard_id!r}.")
        rows, full_rows, start = shards[shard_id]
        full = (full_rows, *param.shape[1:])
        load_slice(param.data[rows], loaded_weight, full, 0, start, f"{shard_id}_proj")


class MergedGateUpLinear(ColumnLinear):
    """Fused gate/up projection: weight [2 * intermediate_size / tp, input_size], rows gate | up, each this
    rank's slice of the intermediate dim.

    Its loader takes shard_id ``0`` (full gate_proj), ``1`` (full up_proj) or ``None`` (full fused gate|up).
    """

    def __init__(self, input_size: int, intermediate_size: int, bias: bool = False) -> None:
        local = divide_for_tp(intermediate_size, "intermediate_size")
        self.intermediate_size = intermediate_size
        self.intermediate_size_per_partition = local
        super().__init__(input_size, 2 * intermediate_size, bias, output_size_per_partition=2 * local)
        for param in self.parameters():
            param.shard_ids = (0, 1)  # type: ignore[attr-defined]

    def weight_loader(  # type: ignore[override]
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | None = None
    ) -> None:
        if shard_id is None:
            check_shape(loaded_weight, (self.output_size, *param.shape[1:]))
            for sid, part in enumerate(loaded_weight.chunk(2, dim=0)):
                self.weight_loader(param, part, sid)
            return
        if shard_id not in (0, 1):
            raise ValueError(f"MergedGateUpLinear shard_id must be 0 (gate) or 1 (up); got {shard_id!r}.")
        local = self.intermediate_size_per_partition
        dst = param.data[shard_id * local : (shard_id + 1) * local]
        full = (self.intermediate_size, *param.shape[1:])
        name = ("gate_proj", "up_proj")[shard_id]
        load_slice(dst, loaded_weight, full, 0, self.tp_rank * local, name)
