"""``config.json`` read as it is, for the architectures inferd implements, without importing transformers.

Resolving a config through ``transformers.AutoConfig`` defines the architecture's config class, and with transformers
5.17 that definition runs ``@auto_docstring``, which imports the auto-modeling tables and with them ``generation``,
``torch._dynamo`` and ``torch.distributed.tensor``: 9 s of CPU on an H100 machine, 13 s on a fresh one, in the
engine process and the frontend alike, on the critical path of every start (benchmarks/README.md).

The model code reads a small set of config values (``models/llama.py``, ``worker/model_runner.py``,
``layers/rotary_embedding.py``, ``config.py``). For Llama, Qwen2 and Qwen3 configs that state every one of them whose
transformers default differs between these classes, the file's values are used as they are: ``NativeConfig`` exposes
its keys as attributes (a key the file lacks raises AttributeError, as a missing attribute does). The values the code
may still take from its own defaults when the file leaves them out are the ones all three transformers classes share:
``hidden_act`` "silu", ``tie_word_embeddings`` / ``attention_bias`` / ``mlp_bias`` false, ``rope_theta`` 10000 (no
RoPE scaling), ``use_sliding_window`` false, ``head_dim`` = hidden_size / num_attention_heads (Llama, Qwen2).
Anything else (another architecture, ``trust_remote_code``, a config that leaves a required key to the class default,
a nested ``text_config``) goes through transformers as before. ``tests/unit/test_native_config.py`` checks the two
paths agree on everything the engine derives.
"""

from __future__ import annotations

import copy
from typing import Any

from inferd.models.registry import SUPPORTED_ARCHITECTURES

_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",  # Qwen2's default is 32, the others' the head count
    "rms_norm_eps",
    "max_position_embeddings",  # 2048 for Llama, 32768 for Qwen
)
# model_type -> keys config.json must state for the file to be read without transformers
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "llama": (*_REQUIRED, "bos_token_id", "eos_token_id"),  # Llama's defaults are 1 and 2, the Qwens' none
    "qwen2": _REQUIRED,
    "qwen3": (*_REQUIRED, "head_dim"),  # Qwen3's default is 128, not hidden_size / num_attention_heads
}


class NativeConfig:
    """The keys of a ``config.json`` as attributes, with ``to_dict()`` and ``model_type`` / ``architectures`` like
    a transformers config. Built by :func:`native_config`."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.__dict__.update(copy.deepcopy(raw))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def __repr__(self) -> str:
        return f"NativeConfig(model_type={self.__dict__.get('model_type')!r}, architectures={self.__dict__.get('architectures')!r})"


def native_config(raw: dict[str, Any], trust_remote_code: bool = False) -> NativeConfig | None:
    """``raw`` (a parsed config.json) as a :class:`NativeConfig`, or None when transformers must resolve it."""
    if trust_remote_code or "auto_map" in raw or "text_config" in raw:
        return None
    required = REQUIRED_KEYS.get(raw.get("model_type"))  # type: ignore[arg-type]
    architectures = raw.get("architectures")
    if required is None or not isinstance(architectures, list) or not architectures:
        return None
    if any(arch not in SUPPORTED_ARCHITECTURES for arch in architectures):
        return None
    if any(key not in raw for key in required):
        return None
    return NativeConfig(raw)
