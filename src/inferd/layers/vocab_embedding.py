"""Token embedding and the LM head (optionally tied to the embedding), with the vocabulary split over the
tensor-parallel ranks.

The vocabulary is cut into ``tp`` contiguous parts of ``ceil(vocab / tp)`` rows; rank ``r`` holds rows
``[r * part, (r + 1) * part)``, the last part padded with zero rows past ``vocab``. At ``tp == 1`` the weight
is the whole [vocab, hidden] matrix and no collective is called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferd import kernels
from inferd.distributed.parallel_state import tp_all_gather, tp_all_reduce, tp_rank, tp_size
from inferd.layers.linear import check_shape


class _VocabShard(nn.Module):
    """Holds this rank's vocabulary part: weight [part, embedding_dim], rows ``[vocab_start, vocab_end)`` of
    the full vocabulary followed by zero padding rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tp_size = tp_size()
        self.part = -(-num_embeddings // self.tp_size)
        self.vocab_start = min(tp_rank() * self.part, num_embeddings)
        self.vocab_end = min(self.vocab_start + self.part, num_embeddings)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
        """Copy this rank's rows of the full [num_embeddings, embedding_dim] checkpoint tensor; zero the padding."""
        check_shape(loaded_weight, (self.num_embeddings, self.embedding_dim))
        num_valid = self.vocab_end - self.vocab_start
        param.data[:num_valid].copy_(loaded_weight[self.vocab_start : self.vocab_end])
        param.data[num_valid:].zero_()

    def _new_weight(self) -> nn.Parameter:
        weight = nn.Parameter(torch.empty(self.part, self.embedding_dim), requires_grad=False)
        weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        return weight


class VocabEmbedding(_VocabShard):
    """Token ids [num_tokens] -> embeddings [num_tokens, embedding_dim] (whole on every rank); weight
    [ceil(num_embeddings / tp), embedding_dim]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.weight = self._new_weight()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        in_part = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)  # [num_tokens]
        local_ids = (input_ids - self.vocab_start) * in_part
        out = F.embedding(local_ids, self.weight).masked_fill_(~in_part.unsqueeze(-1), 0)
        return tp_all_reduce(out)  # [num_tokens, embedding_dim]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows=[{self.vocab_start}, {self.vocab_end})"


class LMHead(_VocabShard):
    """Hidden states [num_tokens, embedding_dim] -> logits [num_tokens, num_embeddings] in the model dtype, whole
    on every rank (each rank computes its vocabulary part, then they are all-gathered). They stay in the model
    dtype: the sampler reads any float dtype (and works on a float32 copy only where a stage modifies them), and
    a float32 copy would cost one more pass over [num_tokens, vocab] per step.

    With ``tie_to`` the head shares that embedding's (sharded) weight Parameter (no own weight to load).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, tie_to: VocabEmbedding | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.tied = tie_to is not None
        if tie_to is not None:
            assert (tie_to.num_embeddings, tie_to.embedding_dim) == (num_embeddings, embedding_dim)
            self.weight = tie_to.weight
        else:
            self.weight = self._new_weight()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return kernels.linear(hidden_states, self.weight)
        local = kernels.linear(hidden_states, self.weight)  # [num_tokens, part]
        logits = tp_all_gather(local, dim=-1)  # [num_tokens, tp * part]
        return logits[..., : self.num_embeddings].contiguous()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, tied={self.tied}"
