"""RMSNorm layer."""

from __future__ import annotations

import torch
from torch import nn

from inferd import kernels


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learned scale ``weight`` [hidden_size].

    ``forward(x)`` returns the normed x; ``forward(x, residual)`` first adds the residual and returns
    ``(normed(x + residual), x + residual)``, the second being the next layer's residual.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [num_tokens, hidden_size]."""
        if residual is None:
            return kernels.rms_norm(x, self.weight, self.eps)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
