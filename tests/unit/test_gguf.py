"""GGUF models with the real SmolLM2-135M-Instruct Q4_1 file: config, tokenizer and chat template from the
metadata, dequantized HF-named weights that make an HF LlamaForCausalLM answer correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gguf_fixture import smollm2_gguf_path
from inferd.models.source import ModelSource, eos_token_ids, load_tokenizer, resolve_model_source
from inferd.models.weight_utils import iter_weights

pytestmark = pytest.mark.slow
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def source(gguf_file: Path) -> ModelSource:
    return resolve_model_source(str(gguf_file))


@pytest.fixture(scope="module")
def weights(source: ModelSource) -> dict[str, torch.Tensor]:
    return dict(iter_weights(source))


def test_gguf_config_from_metadata(gguf_file: Path, source: ModelSource) -> None:
    assert source.load_format == "gguf"
    assert source.gguf_file == str(gguf_file) and source.path == str(gguf_file.parent)
    assert source.checkpoint_dtype is None  # the GPU then picks bfloat16
    cfg = source.hf_config
    assert cfg.architectures == ["LlamaForCausalLM"]
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (576, 1536, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 8192

    from inferd.config import EngineArgs

    config = EngineArgs(model=str(gguf_file.parent), device="cpu", max_model_len=1024).create_engine_config()
    assert config.model_config.load_format == "gguf"
    assert config.model_config.architecture == "LlamaForCausalLM"
    assert config.model_config.source.gguf_file == str(gguf_file)


def test_gguf_load_format_checks(gguf_file: Path) -> None:
    with pytest.raises(ValueError, match="GGUF"):
        resolve_model_source(str(gguf_file), load_format="safetensors")
    dummy = resolve_model_source(str(gguf_file), load_format="dummy")
    assert dummy.load_format == "dummy" and dummy.hf_config.hidden_size == 576


def test_gguf_tokenizer_and_chat_template(source: ModelSource) -> None:
    tokenizer = load_tokenizer(source)
    assert tokenizer is not None
    text = "Hello world! The capital of France is Paris."
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    eos, _ = eos_token_ids(source, tokenizer)
    assert tokenizer.convert_ids_to_tokens(eos) == "<|im_end|>"


def test_gguf_weights_match_llama_state_dict(source: ModelSource, weights: dict[str, torch.Tensor]) -> None:
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        reference = LlamaForCausalLM(source.hf_config).state_dict()
    # tied embeddings: the file has no output.weight, so lm_head.weight is not a separate tensor
    assert set(reference) - set(weights) == {"lm_head.weight"}
    assert set(weights) <= set(reference)
    for name, tensor in weights.items():
        assert tensor.shape == reference[name].shape, name
        assert tensor.is_floating_point() and tensor.device.type == "cpu", name
        assert torch.isfinite(tensor).all(), name


def test_gguf_weights_answer_correctly(source: ModelSource, weights: dict[str, torch.Tensor]) -> None:
    """q/k un-permutation and names are right only if the dequantized model still knows facts."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(source.hf_config).eval()
    result = model.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]
    model.tie_weights()
    tokenizer = load_tokenizer(source)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])
