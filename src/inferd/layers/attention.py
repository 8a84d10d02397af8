"""Paged attention layer: writes this step's keys/values into the KV cache (unless a fused prologue already did),
then attends over the cache."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from inferd import kernels
from inferd.layers.attention_metadata import AttentionMetadata


class Attention(nn.Module):
    """Causal multi-head / grouped-query attention over a paged KV cache.

    ``kv_cache`` is ``(k_cache, v_cache)``, each [num_blocks, block_size, num_kv_heads, head_dim], set by the
    model runner through :func:`bind_kv_caches`. Without a cache (e.g. a memory-profiling run) every sequence
    of the batch must be a whole prompt, and attention runs over the step's own keys/values.
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int) -> None:
        super().__init__()
        assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """q: [num_tokens, num_heads * head_dim]; k, v: [num_tokens, num_kv_heads * head_dim], or both None when
        this step's keys/values are already in the bound cache (written by ``kernels.qk_norm_rope_store``).

        Returns [num_tokens, num_heads * head_dim]; rows of padding tokens are zero.
        """
        num_tokens = q.shape[0]
        assert (k is None) == (v is None), "pass both k and v, or neither (already in the KV cache)"
        q = q.unflatten(-1, (self.num_heads, self.head_dim))  # [num_tokens, num_heads, head_dim]
        if self.kv_cache is None:
            if k is None or v is None:
                raise ValueError("attention without a bound KV cache needs this step's keys and values")
            k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))  # [num_tokens, num_kv_heads, head_dim]
            v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
            out = _prompt_attention(q, k, v, attn_metadata, self.scale)
        else:
            k_cache, v_cache = self.kv_cache
            if k is not None and v is not None:
                k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
                v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
                kernels.store_kv_cache(k, v, k_cache, v_cache, attn_metadata.slot_mapping)
            out = kernels.paged_attention(
                q,
                k_cache,
                v_cache,
                attn_metadata.block_tables,
                attn_metadata.seq_lens,
                attn_metadata.query_start_loc,
                attn_metadata.max_query_len,
                attn_metadata.max_seq_len,
                self.scale,
                attn_metadata.seq_order,
            )  # [num_tokens, num_heads, head_dim]
        return out.reshape(num_tokens, self.num_heads * self.head_dim)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, scale={self.scale:.4g}"
        )


def _prompt_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_metadata: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Causal attention of whole prompts over their own keys/values (no KV cache).

    q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim] -> [num_tokens, num_heads, head_dim]
    """
    starts = attn_metadata.query_start_loc_cpu
    if starts is None:
        starts = attn_metadata.query_start_loc.tolist()
    lens = attn_metadata.seq_lens_cpu
    if lens is None:
        lens = attn_metadata.seq_lens.tolist()
    out = torch.zeros_like(q)
    for b, seq_len in enumerate(lens):
        start, end = starts[b], starts[b + 1]
        assert end - start == seq_len, "attention without a KV cache needs whole prompts (no cached prefix)"
        if seq_len == 0:
            continue
        o = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),  # [num_heads, seq_len, head_dim]
            k[start:end].transpose(0, 1),  # [num_kv_heads, seq_len, head_dim]
            v[start:end].transpose(0, 1),
            is_causal=True,
            scale=scale,
            enable_gqa=True,
        )
        out[start:end] = o.transpose(0, 1)
    return out


def iter_attention_layers(model: nn.Module) -> Iterator[Attention]:
    """The model's :class:`Attention` modules in layer order (module registration order)."""
    for module in model.modules():
        if isinstance(module, Attention):
            yield module


def bind_kv_caches(model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give the i-th attention layer of ``model`` the i-th ``(k_cache, v_cache)`` pair; an empty list unbinds
    every layer (``kv_cache = None``), dropping the model's references to the caches.

    Raises ``ValueError`` when the number of caches differs from the number of attention layers.
    """
    layers = list(iter_attention_layers(model))
    if not kv_caches:
        for layer in layers:
            layer.kv_cache = None
        return
    if len(layers) != len(kv_caches):
        raise ValueError(
            f"got {len(kv_caches)} KV caches for a model with {len(layers)} attention layers; "
            "allocate one (k_cache, v_cache) pair per layer."
        )
    for layer, kv_cache in zip(layers, kv_caches, strict=True):
        layer.kv_cache = kv_cache
