"""The first-start kernel warm-up process: when it runs, what it builds, and that it never holds the engine up."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inferd.config import EngineArgs
from inferd.layers.rotary_embedding import rope_parameters_from_config
from inferd.models.registry import get_model_class
from inferd.models.source import resolve_model_source
from inferd.worker import kernel_warmup

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "model-configs"


@pytest.fixture(autouse=True)
def _gpu_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run where no GPU is; the spec logic is what they check (a test below checks the GPU check)."""
    monkeypatch.setattr(kernel_warmup, "_nvidia_gpu_visible", lambda: True)


def test_spec_for_a_local_folder(tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERD_KERNEL_WARMUP", raising=False)
    spec = kernel_warmup.spec_for(EngineArgs(model=str(tiny_qwen3), max_num_seqs=8, block_size=32))
    assert spec is not None
    assert spec["config_json"] == str(tiny_qwen3 / "config.json")
    assert (spec["max_num_seqs"], spec["block_size"], spec["max_num_batched_tokens"]) == (8, 32, 8192)


def test_no_warmup_where_it_cannot_help(
    tiny_qwen3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERD_KERNEL_WARMUP", raising=False)
    model = str(tiny_qwen3)
    assert kernel_warmup.spec_for(EngineArgs(model=model, tensor_parallel_size=2)) is None
    assert kernel_warmup.spec_for(EngineArgs(model=model, data_parallel_size=2)) is None
    assert kernel_warmup.spec_for(EngineArgs(model=model, device="cpu")) is None
    assert kernel_warmup.spec_for(EngineArgs(model=str(tmp_path))) is None  # no config.json
    assert (
        kernel_warmup.spec_for(EngineArgs(model="org/not-in-the-cache", download_dir=str(tmp_path))) is None
    )
    monkeypatch.setenv("INFERD_KERNEL_WARMUP", "0")
    assert kernel_warmup.spec_for(EngineArgs(model=model)) is None
    assert kernel_warmup.start(EngineArgs(model=model)) is None


def test_no_warmup_without_a_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real check
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not kernel_warmup._nvidia_gpu_visible()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert kernel_warmup._nvidia_gpu_visible() == os.path.exists("/dev/nvidiactl")


def test_spec_finds_a_hub_model_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id whose config.json an earlier start downloaded (the hub cache layout, looked up offline)."""
    monkeypatch.delenv("INFERD_KERNEL_WARMUP", raising=False)
    repo = tmp_path / "models--acme--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    spec = kernel_warmup.spec_for(EngineArgs(model="acme/tiny", download_dir=str(tmp_path)))
    assert spec is not None and Path(spec["config_json"]) == snapshot / "config.json"


@pytest.mark.parametrize("name", ["qwen3-0.6b", "qwen3-8b", "llama-3.1-8b"])
def test_raw_config_builds_the_same_shapes_as_transformers(name: str) -> None:
    """The one-layer model built from the raw config.json has the parameter shapes and rotary tables of the model
    built from transformers' resolved config (so the warm-up compiles the kernels the engine will use)."""
    folder = CONFIGS / name
    raw = json.loads((folder / "config.json").read_text())
    ours = kernel_warmup._one_layer_config(raw)
    theirs = resolve_model_source(str(folder), load_format="dummy").hf_config
    theirs.num_hidden_layers = 1
    cls = get_model_class(raw["architectures"])
    with torch.device("meta"):
        a, b = cls(ours), cls(theirs)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    rot_a = a.model.layers[0].self_attn.rotary_emb
    rot_b = b.model.layers[0].self_attn.rotary_emb
    assert rot_a.cos_sin_cache.shape == rot_b.cos_sin_cache.shape and rot_a.is_neox == rot_b.is_neox
    assert rope_parameters_from_config(ours) == rope_parameters_from_config(theirs)


def test_run_builds_and_runs_the_one_layer_model_on_cpu(tiny_llama: Path) -> None:
    spec = kernel_warmup.spec_for(
        EngineArgs(model=str(tiny_llama), max_num_seqs=4, max_num_batched_tokens=64)
    )
    assert spec is not None
    kernel_warmup.run({**spec, "run_on_cpu": True})


def test_the_process_exits_quietly_without_a_gpu(tiny_qwen3: Path) -> None:
    spec = kernel_warmup.spec_for(EngineArgs(model=str(tiny_qwen3)))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "inferd.worker.kernel_warmup", json.dumps(spec)], env=env, timeout=120
    )
    assert done.returncode == 0


def test_finish_waits_then_kills_a_slow_process() -> None:
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = time.perf_counter()
    kernel_warmup.finish([quick, slow], timeout=3)
    assert quick.returncode == 0
    assert slow.returncode is not None and slow.returncode != 0 and time.perf_counter() - start < 15
    kernel_warmup.finish(None)


def test_start_then_finish_logs_each_process(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The processes started for an engine run (here on a CPU-only machine, where they find nothing to compile and
    exit at once) and the engine's log names each part with its run time and exit code."""
    monkeypatch.setattr(kernel_warmup, "_nvidia_gpu_visible", lambda: True)
    procs = kernel_warmup.start(EngineArgs(model=str(tiny_qwen3), enforce_eager=True))
    assert procs is not None and len(procs) == 1
    with caplog.at_level(logging.INFO, logger="inferd.worker.kernel_warmup"):
        kernel_warmup.finish(procs, timeout=120)
    assert procs[0].returncode == 0
    assert re.search(
        r"Kernel warm-up processes done after [\d.]+ s more: prefill [\d.]+ s \(exit 0\)", caplog.text
    )


@pytest.mark.parametrize(
    "part", [{"part": "prefill"}, {"part": "decode"}, {"part": "decode", "buckets": [2, 8]}]
)
def test_each_part_runs_on_its_own(tiny_qwen3: Path, part: dict[str, object]) -> None:
    spec = kernel_warmup.spec_for(
        EngineArgs(model=str(tiny_qwen3), max_num_seqs=4, max_num_batched_tokens=64)
    )
    assert spec is not None
    kernel_warmup.run({**spec, "run_on_cpu": True, **part})  # CPU: eager, so "decode" compiles nothing


def test_decode_buckets_split_by_kernel_variants_where_cores_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"enforce_eager": False}
    monkeypatch.setattr(kernel_warmup.os, "cpu_count", lambda: 16)
    groups = [p.get("buckets") for p in kernel_warmup.parts(spec)]
    # prefill, then every bucket size exactly once
    assert groups == [None, [1, 1], [2, 8], [9, 16], [17, 32], [33, 1 << 30]]
    monkeypatch.setattr(kernel_warmup.os, "cpu_count", lambda: 8)
    assert [p.get("buckets") for p in kernel_warmup.parts(spec)] == [None, [1, 1], [2, 16], [17, 1 << 30]]
    monkeypatch.setattr(kernel_warmup.os, "cpu_count", lambda: 4)
    assert kernel_warmup.parts(spec) == [{"part": "prefill"}, {"part": "decode"}]
    assert kernel_warmup.parts({"enforce_eager": True}) == [{"part": "prefill"}]
