"""config.json read without transformers (``models/native_config.py``) gives the engine what transformers' config gives.

For every config the native path takes, each value the model code reads and everything the engine derives from the
config (model shapes on the meta device, rotary tables, KV heads and head size, max model length, stop ids, biases,
tying) must equal what ``transformers.AutoConfig`` resolves; configs it must not take go to transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from inferd.config import _derive_max_model_len
from inferd.layers.rotary_embedding import rope_parameters_from_config
from inferd.models import llama
from inferd.models.native_config import REQUIRED_KEYS, NativeConfig, native_config
from inferd.models.registry import get_model_class
from inferd.models.source import eos_token_ids, resolve_model_source

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "model-configs"
READ = (  # every attribute the model code reads (with the default it takes where the code has one)
    ("vocab_size", None),
    ("hidden_size", None),
    ("intermediate_size", None),
    ("num_hidden_layers", None),
    ("num_attention_heads", None),
    ("rms_norm_eps", None),
    ("max_position_embeddings", None),
    ("bos_token_id", None),
    ("eos_token_id", None),
    ("hidden_act", "silu"),
    ("tie_word_embeddings", False),
    ("attention_bias", False),
    ("mlp_bias", False),
    ("use_sliding_window", False),
)


def _transformers_config(folder: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def _derived(cfg: Any) -> dict[str, Any]:
    cls = get_model_class(cfg.architectures)
    with torch.device("meta"):
        model = cls(cfg)
    rot = model.model.layers[0].self_attn.rotary_emb
    values = {name: getattr(cfg, name, default) for name, default in READ}
    if values["eos_token_id"] is not None and not isinstance(values["eos_token_id"], list):
        values["eos_token_id"] = [values["eos_token_id"]]
    return {
        **values,
        "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        "spec": cls.decoder_spec(cfg),
        "rope": rope_parameters_from_config(cfg),
        "rotary": (tuple(rot.cos_sin_cache.shape), rot.is_neox),
        "head_dim": llama._head_dim(cfg),
        "kv_heads": llama._num_kv_heads(cfg),
        "max_model_len": _derive_max_model_len(cfg),
    }


@pytest.fixture(params=["tiny_qwen3", "tiny_qwen2", "tiny_llama", "tiny_llama_kv1"])
def tiny(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_tiny_models_saved_by_transformers_read_natively_and_agree(tiny: Path) -> None:
    source = resolve_model_source(str(tiny), load_format="dummy")
    assert isinstance(source.hf_config, NativeConfig)
    theirs = _transformers_config(tiny)
    assert _derived(source.hf_config) == _derived(theirs)
    assert eos_token_ids(source, None) == eos_token_ids(dataclasses.replace(source, hf_config=theirs), None)


@pytest.mark.parametrize("name", ["qwen3-0.6b", "qwen3-8b", "llama-3.1-8b"])
def test_published_configs_read_natively_and_agree(name: str) -> None:
    folder = CONFIGS / name
    source = resolve_model_source(str(folder), load_format="dummy")
    assert isinstance(source.hf_config, NativeConfig)
    cfg = source.hf_config
    cfg.num_hidden_layers = 1  # meta-device models of one layer keep the test fast
    theirs = _transformers_config(folder)
    theirs.num_hidden_layers = 1
    assert _derived(cfg) == _derived(theirs)


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize("model_type", sorted(REQUIRED_KEYS))
def test_a_config_leaving_a_required_value_to_the_class_default_goes_to_transformers(
    tmp_path: Path, model_type: str
) -> None:
    raw = json.loads((CONFIGS / "qwen3-0.6b" / "config.json").read_text())
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]
    raw.update(model_type=model_type, architectures=[arch], bos_token_id=1, eos_token_id=2)
    assert isinstance(native_config(raw), NativeConfig)
    for key in REQUIRED_KEYS[model_type]:
        partial = {k: v for k, v in raw.items() if k != key}
        assert native_config(partial) is None, key
    # Where the class default differs from the engine's own (Qwen3's head_dim: 128, not hidden / heads), the
    # transformers default is what the engine gets.
    if model_type == "qwen3":
        raw.pop("head_dim")
        raw["hidden_size"], raw["num_attention_heads"] = 2048, 8  # hidden / heads = 256; the class says 128
        source = resolve_model_source(str(_write(tmp_path / "q3", raw)), load_format="dummy")
        assert not isinstance(source.hf_config, NativeConfig)
        assert llama._head_dim(source.hf_config) == 128


def test_what_the_native_path_never_takes() -> None:
    raw = json.loads((CONFIGS / "qwen3-0.6b" / "config.json").read_text())
    assert isinstance(native_config(raw), NativeConfig)
    assert native_config(raw, trust_remote_code=True) is None
    assert native_config({**raw, "auto_map": {"AutoConfig": "x.Config"}}) is None
    assert native_config({**raw, "text_config": {}}) is None
    assert native_config({**raw, "model_type": "mistral"}) is None
    assert native_config({**raw, "architectures": ["Qwen3ForCausalLM", "Qwen3Classifier"]}) is None
    assert native_config({**raw, "architectures": []}) is None
    cfg = native_config(raw)
    assert cfg is not None and cfg.to_dict() == raw and cfg.to_dict() is not raw
    with pytest.raises(AttributeError):
        _ = cfg.not_in_the_file


def test_resolving_a_native_config_imports_no_transformers_model_code(tmp_path: Path) -> None:
    """The point of it: the engine's and the frontend's config resolution stays off transformers' auto-modeling
    tables (what costs 9-13 s on a GPU machine)."""
    code = (
        "import sys\n"
        "from inferd.config import EngineArgs\n"
        f"EngineArgs(model={str(CONFIGS / 'qwen3-0.6b')!r}, load_format='dummy', device='cpu').create_engine_config()\n"
        "heavy = [m for m in ('transformers.models.auto.modeling_auto', 'transformers.generation', 'torch._dynamo')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
