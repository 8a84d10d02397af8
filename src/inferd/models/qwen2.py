"""Qwen2 / Qwen2.5: the shared decoder with q/k/v bias and no o_proj bias."""

from __future__ import annotations

from typing import Any

from inferd.models.llama import DecoderForCausalLM, DecoderSpec


class Qwen2ForCausalLM(DecoderForCausalLM):
    @classmethod
    def decoder_spec(cls, hf_config: Any) -> DecoderSpec:
        return DecoderSpec(qkv_bias=True, o_proj_bias=False, mlp_bias=False, qk_norm=False)
