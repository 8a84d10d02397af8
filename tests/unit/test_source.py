"""Model sources: local folders (single file and sharded), error messages, dummy weights, generation defaults,
EOS ids, and the hub path against a fake hub on 127.0.0.1 (online, then offline from the cache it filled)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from inferd.models.source import (
    eos_token_ids,
    load_generation_defaults,
    load_tokenizer,
    resolve_model_source,
)
from inferd.models.weight_utils import download_weights, initialize_dummy_weights, iter_weights

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def _tiny_qwen3(vocab_size: int = 64, tie: bool = False, layers: int = 2) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=tie,
        eos_token_id=3,
    )
    return Qwen3ForCausalLM(cfg)


def _files(folder: str | Path) -> set[str]:
    root = Path(folder)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].device.type == "cpu"
        assert torch.equal(got[name], tensor), name


# --------------------------------------------------------------------------- local folders


def test_local_folder_resolves_config_tokenizer_and_weights(tiny_qwen3: Path) -> None:
    source = resolve_model_source(str(tiny_qwen3))
    assert source.load_format == "safetensors"
    assert source.path == str(tiny_qwen3) and source.gguf_file is None
    assert source.hf_config.architectures == ["Qwen3ForCausalLM"]
    assert source.checkpoint_dtype == "float32"
    assert source.tokenizer == str(tiny_qwen3)
    tokenizer = load_tokenizer(source)
    assert tokenizer is not None
    ids = tokenizer.encode("Hello world!")
    assert tokenizer.decode(ids) == "Hello world!"
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )

    from transformers import AutoModelForCausalLM

    hf_state = AutoModelForCausalLM.from_pretrained(tiny_qwen3).state_dict()
    got = dict(iter_weights(source))
    # tie_word_embeddings: the checkpoint stores the embedding once, lm_head.weight is not a separate tensor
    assert set(hf_state) - set(got) == {"lm_head.weight"}
    _assert_same_weights(got, {k: v for k, v in hf_state.items() if k in got})


def test_sharded_folder_reads_exactly_the_indexed_shards(tmp_path: Path) -> None:
    model = _tiny_qwen3()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    save_file({"junk": torch.zeros(3)}, tmp_path / "stale-copy.safetensors")  # not in the index: ignored

    source = resolve_model_source(str(tmp_path))
    assert [Path(f).name for f in download_weights(source)] == shards
    _assert_same_weights(dict(iter_weights(source)), model.state_dict())


def test_sharded_index_naming_a_missing_shard_is_an_error(tmp_path: Path) -> None:
    _tiny_qwen3().save_pretrained(tmp_path, max_shard_size="20KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(ValueError, match="missing"):
        list(iter_weights(resolve_model_source(str(tmp_path))))


def test_folder_errors_say_what_was_expected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        resolve_model_source(str(empty))

    bin_only = tmp_path / "bin-only"
    model = _tiny_qwen3()
    model.config.save_pretrained(bin_only)
    torch.save(model.state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*only \*\.safetensors and GGUF"):
        resolve_model_source(str(bin_only))

    config_only = tmp_path / "config-only"
    model.config.save_pretrained(config_only)
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights.*dummy"):
        resolve_model_source(str(config_only))

    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"not a \.gguf"):
        resolve_model_source(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="load_format"):
        resolve_model_source(str(config_only), load_format="pt")
    with pytest.raises(ValueError, match=r"no \.gguf"):
        resolve_model_source(str(config_only), load_format="gguf")

    two_ggufs = tmp_path / "two-ggufs"
    two_ggufs.mkdir()
    (two_ggufs / "a.gguf").write_bytes(b"")
    (two_ggufs / "b.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"several \.gguf files \(a\.gguf, b\.gguf\)"):
        resolve_model_source(str(two_ggufs))


def test_dummy_needs_only_a_config(tmp_path: Path) -> None:
    model = _tiny_qwen3()
    model.config.save_pretrained(tmp_path)
    source = resolve_model_source(str(tmp_path), load_format="dummy")
    assert source.load_format == "dummy"
    assert source.tokenizer is None and load_tokenizer(source) is None
    with pytest.raises(ValueError, match="initialize_dummy_weights"):
        list(iter_weights(source))


def test_initialize_dummy_weights_is_small_uniform_and_seeded() -> None:
    model = _tiny_qwen3()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    initialize_dummy_weights(model, seed=7)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    for name, param in model.named_parameters():
        assert param.abs().max() <= 1e-3, name
        assert param.std() > 1e-4, name  # really random, not constant
    for name, buf in model.named_buffers():
        assert torch.equal(buf, buffers[name]), name

    initialize_dummy_weights(model, seed=7)
    _assert_same_weights(model.state_dict(), first)
    initialize_dummy_weights(model, seed=8)
    assert not torch.equal(model.model.embed_tokens.weight, first["model.embed_tokens.weight"])

    half = _tiny_qwen3().to(torch.bfloat16)
    initialize_dummy_weights(half)
    assert all(p.dtype == torch.bfloat16 and p.abs().max() <= 1e-3 for p in half.parameters())


def test_engine_args_resolve_through_source(tiny_qwen3: Path) -> None:
    from inferd.config import EngineArgs

    config = EngineArgs(model=str(tiny_qwen3), device="cpu").create_engine_config()
    assert config.model_config.load_format == "safetensors"
    assert config.model_config.architecture == "Qwen3ForCausalLM"
    assert config.model_config.source.path == str(tiny_qwen3)


# --------------------------------------------------------------------------- tokenizer, generation config, EOS


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_generation_defaults_and_eos_ids(tiny_qwen3: Path, tmp_path: Path) -> None:
    folder = _copy_model(tiny_qwen3, tmp_path / "model")
    eos = load_tokenizer(resolve_model_source(str(folder))).eos_token_id
    gen = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_new_tokens": 64, "do_sample": True}
    (folder / "generation_config.json").write_text(
        json.dumps({**gen, "min_p": None, "eos_token_id": [eos, 1, 1]})
    )
    source = resolve_model_source(str(folder))

    assert load_generation_defaults(source) == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "max_tokens": 64,
    }
    assert load_generation_defaults(source, "vllm") == {}
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.1, "min_p": 0.05}))
    assert load_generation_defaults(source, str(other)) == {"repetition_penalty": 1.1, "min_p": 0.05}
    with pytest.raises(ValueError, match="generation_config"):
        load_generation_defaults(source, str(tmp_path / "nowhere"))

    tokenizer = load_tokenizer(source)
    assert eos_token_ids(source, tokenizer) == (eos, [1])
    assert eos_token_ids(source, None) == (source.hf_config.eos_token_id, [1])
    (folder / "generation_config.json").unlink()
    assert load_generation_defaults(resolve_model_source(str(folder))) == {}


def test_tokenizer_argument_folder(tiny_qwen3: Path, tmp_path: Path) -> None:
    model = _tiny_qwen3()
    model.save_pretrained(tmp_path / "weights-only")
    source = resolve_model_source(str(tmp_path / "weights-only"))
    assert source.tokenizer is None
    source = resolve_model_source(str(tmp_path / "weights-only"), tokenizer=str(tiny_qwen3))
    assert source.tokenizer == str(tiny_qwen3)
    assert load_tokenizer(source).decode(load_tokenizer(source).encode("Paris")) == "Paris"
    with pytest.raises(ValueError, match="Tokenizer folder"):
        resolve_model_source(str(tmp_path / "weights-only"), tokenizer=str(tmp_path))


# --------------------------------------------------------------------------- hub (fake hub + real huggingface_hub)
# The hub client runs in a subprocess: huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE at import.

HUB_TOKEN = "hf_test_token"


def _error(fn: Any) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return "no error"


def _matches(got: dict[str, torch.Tensor], reference_files: list[str]) -> bool:
    expected: dict[str, torch.Tensor] = {}
    for path in reference_files:
        expected.update(load_file(path))
    return set(got) == set(expected) and all(torch.equal(got[k], v) for k, v in expected.items())


def _client_online(spec: dict[str, Any]) -> dict[str, Any]:
    dl = spec["download_dir"]
    src = resolve_model_source("acme/tiny", download_dir=dl)
    out: dict[str, Any] = {"path": src.path, "commit": src.hub_commit, "tokenizer": src.tokenizer}
    out["files_after_resolve"] = sorted(_files(src.path))
    out["weights"] = [Path(f).name for f in download_weights(src)]
    out["files_after_weights"] = sorted(_files(src.path))
    out["weights_match"] = _matches(dict(iter_weights(src)), spec["tiny_weights"])
    tok = load_tokenizer(src)
    out["roundtrip"] = tok.decode(tok.encode("Hello world!"))
    v1 = resolve_model_source("acme/tiny", revision="v1", download_dir=dl)
    out["v1"] = [v1.hf_config.max_position_embeddings, v1.hub_commit]
    sharded = resolve_model_source("acme/sharded")  # no download_dir: the HF_HOME cache
    out["sharded_path"] = sharded.path
    out["sharded_weights"] = [Path(f).name for f in download_weights(sharded)]
    out["sharded_match"] = _matches(dict(iter_weights(sharded)), spec["sharded_weights"])
    with_tok = resolve_model_source("acme/tiny", tokenizer="acme/tok", download_dir=dl)
    out["hub_tokenizer"] = with_tok.tokenizer
    out["hub_tokenizer_vocab"] = len(load_tokenizer(with_tok))
    out["tokenizer_at_v1"] = resolve_model_source(
        "acme/tiny", tokenizer_revision="v1", download_dir=dl
    ).tokenizer
    out["dummy_format"] = resolve_model_source(
        "acme/bin-only", load_format="dummy", download_dir=dl
    ).load_format
    out["errors"] = {
        "bin-only": _error(lambda: resolve_model_source("acme/bin-only", download_dir=dl)),
        "gated": _error(lambda: resolve_model_source("acme/gated", download_dir=dl)),
        "missing": _error(lambda: resolve_model_source("acme/missing", download_dir=dl)),
        "bad-revision": _error(lambda: resolve_model_source("acme/tiny", revision="nope", download_dir=dl)),
        "bad-id": _error(lambda: resolve_model_source("acme/bad..name", download_dir=dl)),
    }
    return out


def _client_offline(spec: dict[str, Any]) -> dict[str, Any]:
    dl = spec["download_dir"]
    src = resolve_model_source("acme/tiny", download_dir=dl)
    out: dict[str, Any] = {
        "path": src.path,
        "weights_match": _matches(dict(iter_weights(src)), spec["tiny_weights"]),
    }
    tok = load_tokenizer(src)
    out["roundtrip"] = tok.decode(tok.encode("Hello world!"))
    # v1: config cached by the online run, weights never fetched
    v1 = resolve_model_source("acme/tiny", revision="v1", download_dir=dl)
    out["v1_len"] = v1.hf_config.max_position_embeddings
    out["v1_weights"] = _error(lambda: list(iter_weights(v1)))
    out["uncached"] = _error(lambda: resolve_model_source("acme/never", download_dir=dl))
    handmade = resolve_model_source("acme/handmade", download_dir=spec["handmade_cache"])
    out["handmade_match"] = _matches(dict(iter_weights(handmade)), spec["tiny_weights"])
    out["handmade_tokenizer"] = load_tokenizer(handmade) is not None
    return out


def _run_client(name: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import json, sys; import test_source as t; "
        f"print('RESULT=' + json.dumps(t._client_{name}(json.loads(sys.argv[1]))))"
    )
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS_"))
    }
    path = os.pathsep.join(p for p in (str(HERE), str(SRC), os.environ.get("PYTHONPATH")) if p)
    full_env.update(env, PYTHONPATH=path, HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT=")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT=") :])


def _read_folder(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in _files(folder)}


def _hand_built_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The hub cache layout huggingface_hub writes: blobs/, snapshots/<commit>/ symlinks, refs/main."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_download_online_then_offline(tiny_qwen3: Path, tmp_path: Path) -> None:
    from fake_hub import FakeHub

    tiny = tmp_path / "tiny"
    _tiny_qwen3().save_pretrained(tiny)
    for name in TOKENIZER_FILES:
        if (tiny_qwen3 / name).exists():
            shutil.copy(tiny_qwen3 / name, tiny / name)
    tiny_files = _read_folder(tiny)
    v1_config = json.loads(tiny_files["config.json"])
    v1_config["max_position_embeddings"] = 1234
    junk = {
        "pytorch_model.bin": b"legacy weights",
        "README.md": b"# tiny",
        "onnx/model.onnx": b"onnx",
        "original/consolidated.safetensors": b"x",
    }
    sharded = tmp_path / "sharded"
    _tiny_qwen3(layers=3).save_pretrained(sharded, max_shard_size="20KB")
    bin_only = {"config.json": tiny_files["config.json"], "pytorch_model.bin": b"legacy weights"}
    tok_files = {n: c for n, c in tiny_files.items() if n in (*TOKENIZER_FILES, "config.json")}
    hub = FakeHub()
    commits = hub.add_repo(
        "acme/tiny",
        {"main": {**tiny_files, **junk}, "v1": {**tiny_files, "config.json": json.dumps(v1_config).encode()}},
    )
    hub.add_repo("acme/sharded", {"main": {**_read_folder(sharded), "consolidated.safetensors": b"x"}})
    hub.add_repo("acme/bin-only", {"main": bin_only})
    hub.add_repo("acme/gated", {"main": tiny_files}, token="hf_someone_else")
    hub.add_repo("acme/tok", {"main": tok_files})
    handmade_cache = tmp_path / "handmade-cache"
    _hand_built_cache(handmade_cache, "acme/handmade", tiny_files)
    spec = {
        "download_dir": str(tmp_path / "downloads"),
        "tiny_weights": [str(tiny / "model.safetensors")],
        "sharded_weights": [str(p) for p in sorted(sharded.glob("*.safetensors"))],
        "handmade_cache": str(handmade_cache),
    }
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": HUB_TOKEN}
    with hub:
        env["HF_ENDPOINT"] = hub.url
        online = _run_client("online", spec, env)
        seen = len(hub.requests)
        offline = _run_client("offline", spec, {**env, "HF_HUB_OFFLINE": "1"})
        assert len(hub.requests) == seen, "offline mode must not touch the network"

    # resolve fetched config/tokenizer/generation files only; weights came later and nothing else ever did
    assert Path(online["path"]).is_relative_to(spec["download_dir"])
    assert online["commit"] == commits["main"] and Path(online["path"]).name == commits["main"]
    assert online["tokenizer"] == online["path"]
    assert set(online["files_after_resolve"]) == set(tiny_files) - {"model.safetensors"}
    assert online["weights"] == ["model.safetensors"]
    assert set(online["files_after_weights"]) == set(tiny_files)
    assert online["weights_match"] and online["roundtrip"] == "Hello world!"
    downloaded = {p.split("/resolve/", 1)[1] for p in hub.paths("GET") if "/resolve/" in p}
    for name in ("pytorch_model.bin", "README.md", "onnx/model.onnx", "consolidated.safetensors"):
        assert not any(d.endswith("/" + name) for d in downloaded), name
    assert all(r.authorization == f"Bearer {HUB_TOKEN}" for r in hub.requests)

    assert online["v1"] == [1234, commits["v1"]]
    assert Path(online["sharded_path"]).is_relative_to(tmp_path / "hf-home" / "hub")
    assert online["sharded_weights"] == sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert online["sharded_match"]
    assert online["hub_tokenizer"] != online["path"] and "acme--tok" in online["hub_tokenizer"]
    assert online["hub_tokenizer_vocab"] > 100
    assert Path(online["tokenizer_at_v1"]).name == commits["v1"]

    assert online["dummy_format"] == "dummy"  # config only: no weights needed
    errors = online["errors"]
    assert "only *.safetensors and GGUF" in errors["bin-only"] and "pytorch_model.bin" in errors["bin-only"]
    assert "gated" in errors["gated"] and "HF_TOKEN" in errors["gated"]
    assert "acme/missing" in errors["missing"] and "HF_TOKEN" in errors["missing"]
    assert "no revision 'nope'" in errors["bad-revision"]
    assert "hub id" in errors["bad-id"]

    assert offline["path"] == online["path"] and offline["weights_match"]
    assert offline["roundtrip"] == "Hello world!"
    assert offline["v1_len"] == 1234 and "HF_HUB_OFFLINE=1" in offline["v1_weights"]
    assert "HF_HUB_OFFLINE=1" in offline["uncached"] and "acme/never" in offline["uncached"]
    assert offline["handmade_match"] and offline["handmade_tokenizer"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_initialize_dummy_weights_on_gpu() -> None:
    model = _tiny_qwen3().to("cuda", torch.bfloat16)
    initialize_dummy_weights(model, seed=3)
    first = {k: v.clone() for k, v in model.named_parameters()}
    assert all(p.is_cuda and p.abs().max() <= 1e-3 and p.float().std() > 1e-4 for p in first.values())
    initialize_dummy_weights(model, seed=3)
    assert all(torch.equal(p, first[name]) for name, p in model.named_parameters())
