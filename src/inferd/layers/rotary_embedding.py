"""Rotary position embedding: the cos/sin table (plain, linear and Llama-3 scaled RoPE, as HF) and its module."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from inferd import kernels

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters_from_config(hf_config: Any) -> dict[str, Any]:
    """The model's RoPE settings as one dict holding at least ``rope_type`` and ``rope_theta``.

    Reads transformers 5 configs (``config.rope_parameters``) and older ones (``config.rope_theta`` plus
    ``config.rope_scaling``, whose type key may be ``type``). Raises ``ValueError`` for RoPE types other than
    those in ``SUPPORTED_ROPE_TYPES``.
    """
    params: dict[str, Any] = {}
    rope_parameters = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope_parameters, dict):
        params.update(rope_parameters)
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(hf_config, "rope_theta", None) or 10000.0
    rope_scaling = getattr(hf_config, "rope_scaling", None)
    if isinstance(rope_scaling, dict) and "rope_type" not in params:
        params.update(rope_scaling)
    if "rope_type" not in params:
        params["rope_type"] = params.pop("type", "default")
    params.pop("type", None)
    if (
        "partial_rotary_factor" not in params
        and getattr(hf_config, "partial_rotary_factor", None) is not None
    ):
        params["partial_rotary_factor"] = hf_config.partial_rotary_factor
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"RoPE type {params['rope_type']!r} is not supported; supported types: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}. Remove or change rope_scaling / rope_parameters in config.json."
        )
    return params


def compute_inv_freq(rotary_dim: int, rope_params: dict[str, Any]) -> torch.Tensor:
    """Inverse frequencies [rotary_dim // 2] float32 on the CPU, exactly as transformers computes them."""
    base = float(rope_params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    rope_type = rope_params["rope_type"]
    if rope_type == "linear":
        inv_freq = inv_freq / float(rope_params["factor"])
    elif rope_type == "llama3":
        factor = float(rope_params["factor"])
        low_freq_factor = float(rope_params["low_freq_factor"])
        high_freq_factor = float(rope_params["high_freq_factor"])
        old_context_len = rope_params["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    return inv_freq


def compute_cos_sin_cache(max_position: int, rotary_dim: int, rope_params: dict[str, Any]) -> torch.Tensor:
    """[max_position, rotary_dim] float32 on the CPU: cos in the first rotary_dim/2 columns, sin in the rest."""
    inv_freq = compute_inv_freq(rotary_dim, rope_params)  # [rotary_dim // 2]
    t = torch.arange(max_position, dtype=torch.int64).float()  # [max_position]
    freqs = torch.outer(t, inv_freq)  # [max_position, rotary_dim // 2]
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotates the first ``rotary_dim`` dims of every query/key head by its token's position.

    Holds ``cos_sin_cache`` [max_position, rotary_dim] float32 (a non-persistent buffer, built on the CPU and
    moved to the current default device). One instance may be shared by all layers of a model.
    """

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        rope_params: dict[str, Any],
        is_neox: bool = True,
    ) -> None:
        super().__init__()
        assert rotary_dim <= head_dim and rotary_dim % 2 == 0
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.is_neox = is_neox
        cache = compute_cos_sin_cache(max_position, rotary_dim, rope_params)
        device = torch.empty(0).device  # the current default device
        self.register_buffer("cos_sin_cache", cache.to(device), persistent=False)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [num_tokens]; query: [num_tokens, num_heads * head_dim]; key: [num_tokens, num_kv_heads * head_dim].

        Returns rotated (query, key) of the same shapes.
        """
        q = query.unflatten(-1, (-1, self.head_dim))  # [num_tokens, num_heads, head_dim]
        k = key.unflatten(-1, (-1, self.head_dim))  # [num_tokens, num_kv_heads, head_dim]
        q, k = kernels.rotary_embedding(positions, q, k, self.cos_sin_cache, self.is_neox)
        return q.flatten(-2), k.flatten(-2)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, is_neox={self.is_neox}"


def get_rope(hf_config: Any, head_dim: int, is_neox: bool = True) -> RotaryEmbedding:
    """The RoPE module a HF decoder config asks for, sized for ``max_position_embeddings`` positions."""
    params = rope_parameters_from_config(hf_config)
    if params["rope_type"] == "llama3":
        params.setdefault("original_max_position_embeddings", hf_config.max_position_embeddings)
    rotary_dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
    max_position = int(getattr(hf_config, "max_position_embeddings", 0) or 0)
    if max_position <= 0:
        raise ValueError("the model config needs a positive max_position_embeddings to size the RoPE table.")
    return RotaryEmbedding(head_dim, rotary_dim, max_position, params, is_neox)
