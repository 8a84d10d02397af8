"""Qwen3: the shared decoder with per-head RMSNorm on q and k (over head_dim, before rotary)."""

from __future__ import annotations

from typing import Any

from inferd.models.llama import DecoderForCausalLM, DecoderSpec


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Qwen3 dense models; ``attention_bias`` (false in released checkpoints) applies to q/k/v/o."""

    @classmethod
    def decoder_spec(cls, hf_config: Any) -> DecoderSpec:
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(qkv_bias=attention_bias, o_proj_bias=attention_bias, mlp_bias=False, qk_norm=True)
