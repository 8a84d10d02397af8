"""RMSNorm layer."""

from __future__ import annotations

import torch
from torch import nn

from inferd import kernels
from inferd.distributed.parallel_state import tp_all_reduce_add_rms_norm


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learned scale ``weight`` [hidden_size].

    ``forward(x)`` returns the normed x; ``forward(x, residual)`` first adds the residual and returns
    ``(normed(x + residual), x + residual)``, the second being the next layer's residual. ``forward(x, residual,
    reduce=True)`` takes x as this tensor-parallel rank's partial sums and sums them over the ranks first (one
    fused kernel for small CUDA batches: ``tp_all_reduce_add_rms_norm``).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, *, reduce: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [num_tokens, hidden_size]."""
        if residual is None:
            if reduce:
                raise ValueError("RMSNorm(reduce=True) needs the residual it is fused with")
            return kernels.rms_norm(x, self.weight, self.eps)
        if reduce:
            return tp_all_reduce_add_rms_norm(x, residual, self.weight, self.eps)
        return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
