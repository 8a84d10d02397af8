"""Tensor parallelism on CPU (gloo between worker processes): TP = 2 gives the same greedy tokens as TP = 1, offline
and through `inferd serve -tp 2`; a dead worker turns /health to 503 and the server exits non-zero."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd import LLM, SamplingParams
from inferd.worker.executor import check_shm

PROMPTS = ["The quick brown fox", "Paris is the capital of France. Berlin is", "Hello", "def add(a, b):" * 4]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _generate(
    model: Path, params: SamplingParams | list[SamplingParams] = GREEDY, **kwargs: Any
) -> tuple[list[list[int]], list[str]]:
    llm = LLM(
        str(model), dtype="float32", max_model_len=256, kv_cache_memory_bytes=16 << 20, seed=0, **kwargs
    )
    try:
        outs = llm.generate(PROMPTS, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs], [o.outputs[0].text for o in outs]
    finally:
        llm.llm_engine.shutdown()
        del llm
        gc.collect()


@pytest.mark.parametrize("fixture", ["tiny_qwen3", "tiny_llama", "tiny_llama_kv1"])
def test_tp2_greedy_equals_tp1(fixture: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(fixture)
    assert _generate(model, tensor_parallel_size=2)[0] == _generate(model)[0]


def test_tp2_async_multistep_rounds_equal_tp1(tiny_qwen3: Path) -> None:
    """Multi-step rounds scheduled while the previous one runs (the workers queue and resolve theirs in order):
    the same greedy tokens as TP = 1 stepping one token at a time, with length stops at many offsets of a round."""
    params = [
        SamplingParams(temperature=0.0, max_tokens=5 + 3 * i, ignore_eos=True) for i in range(len(PROMPTS))
    ]
    fast = _generate(tiny_qwen3, params, tensor_parallel_size=2, num_scheduler_steps=4, async_scheduling=True)
    assert fast[0] == _generate(tiny_qwen3, params)[0]
    assert [len(t) for t in fast[0]] == [p.max_tokens for p in params]


def test_tp2_seeded_sampling_is_reproducible(tiny_qwen3: Path) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=10, ignore_eos=True)
    first = _generate(tiny_qwen3, params, tensor_parallel_size=2)
    assert first == _generate(tiny_qwen3, params, tensor_parallel_size=2)


def test_too_small_dev_shm_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--ipc=host or --shm-size"):
        check_shm(str(tmp_path), min_bytes=1 << 62)
    check_shm(str(tmp_path), min_bytes=1)
    check_shm(str(tmp_path / "missing"))  # no such mount: nothing to check


def _children(pid: int) -> list[int]:
    return [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]


def _tp_worker_pids(server_pid: int) -> list[int]:
    """The server's grandchildren started as ``python -m inferd.worker.worker_proc``."""
    return [
        pid
        for child in _children(server_pid)
        for pid in _children(child)
        if b"inferd.worker.worker_proc" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker")
def test_serve_tp2_matches_offline_and_a_dead_worker_stops_it(
    tiny_qwen3: Path, tmp_path: Path, inferd_server_factory: Any, wait_unhealthy: Any
) -> None:
    expected = _generate(tiny_qwen3)[1]
    srv = inferd_server_factory(tiny_qwen3, tmp_path, "-tp", "2", "--kv-cache-memory-bytes", str(16 << 20))
    try:
        base = srv.base_url
        for prompt, text in zip(PROMPTS, expected):
            body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
            r = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == text
        workers = _tp_worker_pids(srv.proc.pid)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        wait_unhealthy(base, 10.0, "a TP worker died")
        assert srv.proc.wait(30) not in (0, None)
        assert "worker rank 1 exited" in srv.log()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def _rich(model: Path, **kwargs: Any) -> tuple[Any, ...]:
    from inferd.sampling_params import StructuredOutputsParams

    llm = LLM(
        str(model), dtype="float32", max_model_len=256, kv_cache_memory_bytes=16 << 20, seed=0, **kwargs
    )
    try:
        lp = llm.generate(
            PROMPTS[:2],
            SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2),
            use_tqdm=False,
        )
        fan = llm.generate(
            ["Paris is"], SamplingParams(temperature=0.8, max_tokens=5, n=3, seed=1), use_tqdm=False
        )
        choice = StructuredOutputsParams(choice=["yes", "no"])
        grammar = llm.generate(
            ["Answer:"],
            SamplingParams(temperature=0, max_tokens=20, structured_outputs=choice),
            use_tqdm=False,
        )
        return (
            [o.outputs[0].token_ids for o in lp],
            [[d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in lp],
            [[None if d is None else sorted(d) for d in o.prompt_logprobs] for o in lp],
            [c.token_ids for c in fan[0].outputs],
            grammar[0].outputs[0].text,
        )
    finally:
        llm.llm_engine.shutdown()


def test_tp2_logprobs_n_and_grammars_match_tp1(tiny_qwen3: Path) -> None:
    ids1, lp1, plp1, fan1, text1 = _rich(tiny_qwen3)
    ids2, lp2, plp2, fan2, text2 = _rich(tiny_qwen3, tensor_parallel_size=2)
    assert ids2 == ids1 and plp2 == plp1 and fan2 == fan1 and text2 == text1 in ("yes", "no")
    assert max(abs(a - b) for r1, r2 in zip(lp1, lp2) for a, b in zip(r1, r2)) < 1e-4
