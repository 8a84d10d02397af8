"""GGUF weights as HF-named float tensors, streamed one tensor at a time.

Uses transformers' GGUF integration (the same name map and per-architecture tensor processors as
``load_gguf_checkpoint``, which also undo llama.cpp's q/k permutation) and the ``gguf`` package's reader and
dequantizer, but never holds more than one dequantized tensor besides those an MoE processor merges.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def iter_gguf_weights(gguf_file: str, hf_config: PretrainedConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(HF parameter name, CPU float tensor)`` for every GGUF tensor that maps to an HF parameter of
    ``hf_config``'s causal-LM class. A tied ``lm_head.weight`` is absent when the file has no ``output.weight``."""
    from gguf import GGUFReader, dequantize
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    reader = GGUFReader(gguf_file)
    architecture = read_field(reader, "general.architecture")[0]
    # The processors read HF config keys (num_attention_heads, num_key_value_heads, ...), as load_gguf_checkpoint
    # parses them from the same metadata.
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=hf_config.to_dict())
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(hf_config)  # names only, no memory
    name_map = get_gguf_hf_weights_map(skeleton, processor)
    del skeleton
    parsed: dict[str, dict] = {"tensors": {}}  # where MoE processors assemble merged expert tensors
    for tensor in tqdm(reader.tensors, desc="Dequantizing GGUF tensors"):
        weights = dequantize(tensor.data, tensor.tensor_type)  # [*shape] float numpy
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=name_map, parsed_parameters=parsed
        )
        if result.name is None or result.name not in name_map:
            continue
        yield name_map[result.name], torch.from_numpy(np.array(result.weights, copy=True))
    yield from parsed["tensors"].items()
