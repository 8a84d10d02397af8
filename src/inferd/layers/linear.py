"""Linear layers. Every weight-shape rule (fusing, and later tensor-parallel sharding) lives in their weight
loaders, which the model's ``load_weights`` calls as ``param.weight_loader(param, loaded_weight[, shard_id])``.

A fused parameter carries ``param.shard_ids``: the shard ids it must receive before it counts as loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """Copy a checkpoint tensor of exactly ``param``'s shape into it (casting dtype/device).

    Raises ``ValueError`` on a shape mismatch (the checkpoint does not fit the model config).
    """
    if tuple(param.shape) != tuple(loaded_weight.shape):
        raise ValueError(
            f"checkpoint tensor has shape {tuple(loaded_weight.shape)} but the model expects "
            f"{tuple(param.shape)}; check that config.json matches the weights."
        )
    param.data.copy_(loaded_weight)


def _load_shard(param: nn.Parameter, loaded_weight: torch.Tensor, offset: int, size: int, what: str) -> None:
    """Copy ``loaded_weight`` into rows ``[offset, offset + size)`` of ``param`` (dim 0 is the output dim)."""
    expected = (size, *param.shape[1:])
    if tuple(loaded_weight.shape) != expected:
        raise ValueError(
            f"checkpoint tensor for {what} has shape {tuple(loaded_weight.shape)} but the model expects "
            f"{expected}; check that config.json matches the weights."
        )
    param.data[offset : offset + size].copy_(loaded_weight)


class LinearBase(nn.Module):
    """``y = x @ weight.T + bias`` with weight [output_size, input_size], built on the default device/dtype."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, input_size] -> [num_tokens, output_size]."""
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}"


class ColumnLinear(LinearBase):
    """Linear layer whose output dim is the one to shard under tensor parallelism."""


class RowLinear(LinearBase):
    """Linear layer whose input dim is the one to shard under tensor parallelism."""


class QKVLinear(ColumnLinear):
    """Fused q/k/v projection: weight [(num_heads + 2 * num_kv_heads) * head_dim, hidden_size], rows q | k | v.

    Its loader takes shard_id ``"q"``, ``"k"`` or ``"v"`` for HF's separate q_proj/k_proj/v_proj tensors.
    """

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False
    ) -> None:
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias)
        for param in self.parameters():
            param.shard_ids = ("q", "k", "v")  # type: ignore[attr-defined]

    def weight_loader(  # type: ignore[override]
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | None = None
    ) -> None:
        if shard_id is None:
            default_weight_loader(param, loaded_weight)
            return
        offsets = {
            "q": (0, self.q_size),
            "k": (self.q_size, self.kv_size),
            "v": (self.q_size + self.kv_size, self.kv_size),
        }
        if shard_id not in offsets:
            raise ValueError(f"QKVLinear shard_id must be 'q', 'k' or 'v'; got {shard_id!r}.")
        offset, size = offsets[shard_id]
        _load_shard(param, loaded_weight, offset, size, f"{shard_id}_proj")


class MergedGateUpLinear(ColumnLinear):
    """Fused gate/up projection: weight [2 * intermediate_size, input_size], rows gate | up.

    Its loader takes shard_id ``0`` (gate_proj) or ``1`` (up_proj).
    """

    def __init__(self, input_size: int, intermediate_size: int, bias: bool = False) -> None:
        self.intermediate_size = intermediate_size
        super().__init__(input_size, 2 * intermediate_size, bias)
        for param in self.parameters():
            param.shard_ids = (0, 1)  # type: ignore[attr-defined]

    def weight_loader(  # type: ignore[override]
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | None = None
    ) -> None:
        if shard_id is None:
            default_weight_loader(param, loaded_weight)
            return
        if shard_id not in (0, 1):
            raise ValueError(f"MergedGateUpLinear shard_id must be 0 (gate) or 1 (up); got {shard_id!r}.")
        name = ("gate_proj", "up_proj")[shard_id]
        _load_shard(param, loaded_weight, shard_id * self.intermediate_size, self.intermediate_size, name)
