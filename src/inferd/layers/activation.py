"""Activation layers."""

from __future__ import annotations

import torch
from torch import nn

from inferd import kernels


class SiluAndMul(nn.Module):
    """Gated SiLU: x [num_tokens, 2 * intermediate] -> ``silu(x[:, :I]) * x[:, I:]`` [num_tokens, intermediate]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)
