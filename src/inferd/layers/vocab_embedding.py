"""Token embedding and the LM head (optionally tied to the embedding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd.layers.linear import default_weight_loader


class VocabEmbedding(nn.Module):
    """Token ids [num_tokens] -> embeddings [num_tokens, embedding_dim]; weight [num_embeddings, embedding_dim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LMHead(nn.Module):
    """Hidden states [num_tokens, embedding_dim] -> float32 logits [num_tokens, num_embeddings].

    With ``tie_to`` the head shares that embedding's weight Parameter (no own weight to load).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tie_to: VocabEmbedding | None = None) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tied = tie_to is not None
        if tie_to is not None:
            assert tuple(tie_to.weight.shape) == (num_embeddings, embedding_dim)
            self.weight = tie_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
            self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.weight).float()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, tied={self.tied}"
