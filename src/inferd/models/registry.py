"""Which model class serves which HF ``architectures`` entry. Model modules are imported on first use."""

from __future__ import annotations

import importlib

# HF architecture name -> (module, class)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("inferd.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("inferd.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("inferd.models.qwen3", "Qwen3ForCausalLM"),
}


def get_model_class(architectures: list[str] | None) -> type:
    """The class for the first supported entry of the config's ``architectures``.

    Raises ``ValueError`` listing the supported architectures when none of them is supported.
    """
    for arch in architectures or []:
        if arch in SUPPORTED_ARCHITECTURES:
            module_name, class_name = SUPPORTED_ARCHITECTURES[arch]
            return getattr(importlib.import_module(module_name), class_name)
    raise ValueError(
        f"model architecture(s) {list(architectures or [])} not supported; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}."
    )
