"""Tensor parallelism on two CUDA GPUs (NCCL, CUDA graphs): TP = 2 equals TP = 1 greedily in float32 on the
Qwen3-0.6B shape (random weights spread wide enough that float32 rounding never flips an argmax)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "model-configs" / "qwen3-0.6b" / "config.json"


@pytest.fixture(scope="module")
def qwen3_06b_random(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-0.6B-shaped checkpoint (float32 safetensors) with random weights, written without building the
    HF model on a device: names and shapes come from a meta-device instance."""
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("qwen3-0.6b-random")
    cfg = Qwen3Config(**{k: v for k, v in json.loads(CONFIG.read_text()).items() if k != "architectures"})
    cfg.architectures = ["Qwen3ForCausalLM"]
    cfg.torch_dtype = "float32"
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in Qwen3ForCausalLM(cfg).named_parameters()}
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.float32, device="cuda")
        if "norm" in name:
            t.uniform_(0.8, 1.2, generator=gen)
        else:
            t.normal_(0.0, 0.05, generator=gen)
        tensors[name] = t.cpu()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(path)
    return path


def _greedy(path: Path, prompts: list[list[int]], **kwargs: object) -> list[list[int]]:
    from inferd import LLM, SamplingParams

    llm = LLM(str(path), dtype="float32", max_model_len=1024, kv_cache_memory_bytes=2 << 30, **kwargs)
    try:
        params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]
    finally:
        llm.llm_engine.shutdown()
        del llm
        gc.collect()
        torch.cuda.empty_cache()


def test_tp2_equals_tp1_float32_qwen3_0_6b_shape(qwen3_06b_random: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    prompts = [[(13 * i + 7 * j) % 150000 + 10 for j in range(n)] for i, n in enumerate((3, 40, 200, 517))]
    tp1 = _greedy(qwen3_06b_random, prompts)
    tp2 = _greedy(qwen3_06b_random, prompts, tensor_parallel_size=2)
    assert tp2 == tp1
