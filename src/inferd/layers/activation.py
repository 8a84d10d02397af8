"""Activation layers."""

from __future__ import annotations

import torch
from torch import nn

from inferd import kernels


class SiluAndMul(nn.Module):
    """Gated SiLU: x [num_tokens, 2 * intermediate] -> ``silu(x[:, :I]) * x[:, I:]`` [num_tokens, intermediate].

    The decoder MLP does not use it: its down projection applies the activation inside its own kernel
    (``RowLinear.forward(gate_up, silu_mul_input=True)`` -> ``kernels.silu_and_mul_linear``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)
