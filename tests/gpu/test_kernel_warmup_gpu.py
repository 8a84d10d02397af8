"""The kernel warm-up processes compile every Triton kernel an engine start needs (memory profile + graph capture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inferd.config import EngineArgs
from inferd.worker import kernel_warmup

CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "model-configs" / "qwen3-0.6b"


def _compiled(cache: Path) -> set[str]:
    """One entry per compiled kernel variant (Triton keeps each in its own hashed folder)."""
    return {
        str(p.parent.relative_to(cache)) + "/" + p.name
        for p in cache.glob("*/*.json")
        if "__grp" not in p.name
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engine_start_after_the_warmup_compiles_nothing_new(tmp_path: Path) -> None:
    cache = tmp_path / "triton"
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "INFERD_KERNEL_WARMUP": "0"}
    args = EngineArgs(model=str(CONFIG), load_format="dummy", dtype="bfloat16", max_model_len=4096)
    spec = kernel_warmup.spec_for(args)
    assert spec is not None
    for part in kernel_warmup.parts(spec):
        done = subprocess.run(
            [sys.executable, "-m", "inferd.worker.kernel_warmup", json.dumps({**spec, **part})],
            env=env,
            timeout=600,
        )
        assert done.returncode == 0
    warmed = _compiled(cache)
    assert warmed
    code = (
        "from inferd import LLM; "
        f"LLM({str(CONFIG)!r}, load_format='dummy', dtype='bfloat16', max_model_len=4096, gpu_memory_utilization=0.5)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, timeout=600, check=True)
    assert _compiled(cache) - warmed == set()
