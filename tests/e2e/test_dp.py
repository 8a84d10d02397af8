"""Data parallelism (``--data-parallel-size``): least-loaded routing and abort routing with fake replicas; offline
``LLM(..., data_parallel_size=2)`` gives dp=1's greedy tokens with both replicas used; ``inferd serve -dp 2`` serves
concurrent requests on both replicas, and a killed replica turns /health to 503 and stops the server non-zero."""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd import LLM, SamplingParams
from inferd.engine.core_types import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest, SchedulerStats
from inferd.engine.dp_client import DPEngineCoreClient, DPSchedulerStats, replica_envs
from inferd.server.metrics import PrometheusStatLogger

pytestmark = pytest.mark.timeout(300)
PROMPTS = [
    "The quick brown fox",
    "Paris is the capital of France. Berlin is",
    "Hello",
    "def add(a, b):\n    return a + b\n",
    "Numbers 0 1 2 3",
    "Café, naïve, über",
    "How are you today?",
    "Once upon a time",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
ENGINE_KWARGS: dict[str, Any] = {"max_model_len": 256, "kv_cache_memory_bytes": 64 << 20, "seed": 0}


# ---------------------------------------------------------------------------------------------------- fake replicas
class FakeReplica:
    """Records what the data-parallel client sends it; ``emit`` / ``die`` play the engine core's side."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.added: list[str] = []
        self.aborted: list[str] = []
        self.dead = False
        self.error: str | None = None
        self.shut_down = False
        self._fail = fail
        self._on_outputs: Callable[[EngineCoreOutputs], None] | None = None
        self._on_dead: Callable[[str], None] | None = None

    def wait_ready(self) -> dict[str, Any]:
        if self._fail is not None:
            raise self._fail
        return {"num_blocks": 10}

    def start_output_thread(self, on_outputs: Callable[..., None], on_dead: Callable[[str], None]) -> None:
        self._on_outputs, self._on_dead = on_outputs, on_dead

    def add_request(self, request: EngineCoreRequest) -> None:
        self.added.append(request.req_id)

    def abort_requests(self, req_ids: list[str]) -> None:
        self.aborted.extend(req_ids)

    def is_alive(self) -> bool:
        return not self.dead

    def shutdown(self, timeout: float = 5.0) -> None:
        self.shut_down = self.dead = True

    def emit(self, finished: list[str] = (), stats: SchedulerStats | None = None) -> None:  # type: ignore[assignment]
        assert self._on_outputs is not None
        outs = [EngineCoreOutput(r, [1], finish_reason="length") for r in finished]
        self._on_outputs(EngineCoreOutputs(outs, stats))

    def die(self, reason: str) -> None:
        assert self._on_dead is not None
        self.dead = True
        self._on_dead(reason)


def _req(req_id: str) -> EngineCoreRequest:
    return EngineCoreRequest(req_id, [1, 2, 3], SamplingParams(max_tokens=4), None, 0.0)


@pytest.fixture
def fake_dp() -> tuple[DPEngineCoreClient, list[FakeReplica], list[EngineCoreOutputs], list[str]]:
    replicas = [FakeReplica(), FakeReplica()]
    client = DPEngineCoreClient(replicas)
    assert client.wait_ready()["num_blocks"] == 20
    outputs: list[EngineCoreOutputs] = []
    deaths: list[str] = []
    client.start_output_thread(outputs.append, deaths.append)
    return client, replicas, outputs, deaths


def test_least_loaded_routing_keeps_children_together(fake_dp: Any) -> None:
    client, (r0, r1), outputs, _ = fake_dp
    client.add_request(_req("a"))
    client.add_request(_req("b"))
    client.add_request(_req("c"))  # tie 1:1 → lowest index
    assert (r0.added, r1.added, client.num_unfinished) == (["a", "c"], ["b"], [2, 1])
    client.add_requests([_req("0_p"), _req("1_p"), _req("2_p")])  # the n=3 children of one request
    assert r1.added == ["b", "0_p", "1_p", "2_p"] and client.num_unfinished == [2, 4]
    r1.emit(finished=["b", "0_p", "1_p"])
    assert client.num_unfinished == [2, 1] and len(outputs) == 1
    client.add_request(_req("d"))
    assert r1.added[-1] == "d" and client.num_routed == [2, 5]


def test_aborts_go_to_the_owner_and_count_once(fake_dp: Any) -> None:
    client, (r0, r1), _, _ = fake_dp
    for req_id in ("a", "b", "c", "d"):
        client.add_request(_req(req_id))
    client.abort_requests(["b", "unknown", "c"])
    assert (r0.aborted, r1.aborted, client.num_unfinished) == (["c"], ["b"], [1, 1])
    r1.emit(finished=["b"])  # the core's late output for an aborted request
    client.abort_requests(["b"])
    assert client.num_unfinished == [1, 1] and r1.aborted == ["b"]
    client.add_request(_req("e"))
    assert r0.added[-1] == "e"


def test_stats_are_aggregated_and_exported_per_engine(fake_dp: Any) -> None:
    _, (r0, r1), outputs, _ = fake_dp
    r0.emit(
        stats=SchedulerStats(
            num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.5, prefix_cache_queries=7
        )
    )
    r1.emit(stats=SchedulerStats(num_running_reqs=3, kv_cache_usage=0.1, prefix_cache_queries=5))
    agg = outputs[-1].scheduler_stats
    assert isinstance(agg, DPSchedulerStats)
    assert (agg.num_running_reqs, agg.num_waiting_reqs, agg.prefix_cache_queries) == (5, 1, 12)
    assert agg.kv_cache_usage == pytest.approx(0.3) and len(agg.engines) == 2
    logger = PrometheusStatLogger("m")
    logger.record(agg, None)
    text = logger.render().decode()
    assert 'inferd:num_requests_running{engine="1",model_name="m"} 3.0' in text
    assert 'inferd:prefix_cache_queries_total{engine="0",model_name="m"} 7.0' in text


def test_first_death_is_reported_once_and_stops_the_others(fake_dp: Any) -> None:
    client, (r0, r1), _, deaths = fake_dp
    r1.die("engine process exited (code -9)")
    r0.die("engine process exited (code 1)")
    assert deaths == ["data-parallel replica 1: engine process exited (code -9)"]
    assert r0.shut_down and not r1.shut_down and client.dead and not client.is_alive()


def test_a_replica_failing_to_start_stops_all() -> None:
    replicas = [FakeReplica(), FakeReplica(ValueError("The engine failed to start: no weights"))]
    with pytest.raises(ValueError, match="no weights"):
        DPEngineCoreClient(replicas).wait_ready()
    assert all(r.shut_down for r in replicas)


def test_gpu_placement() -> None:
    assert replica_envs("cuda", 1, 1, ["0"]) == [{}]
    assert replica_envs("cuda", 2, 2, ["3", "5", "6", "7"]) == [
        {"CUDA_VISIBLE_DEVICES": "3,5"},
        {"CUDA_VISIBLE_DEVICES": "6,7"},
    ]
    assert replica_envs("cuda", 1, 3, ["0", "1", "2", "3"])[2] == {"CUDA_VISIBLE_DEVICES": "2"}
    with pytest.raises(ValueError, match="--data-parallel-size 2 × --tensor-parallel-size 2 needs 4 GPUs"):
        replica_envs("cuda", 2, 2, ["0", "1", "2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_NUM_THREADS", raising=False)
        cpu = replica_envs("cpu", 1, 2)
    assert len(cpu) == 2 and all(
        "CUDA_VISIBLE_DEVICES" not in e and int(e["OMP_NUM_THREADS"]) >= 1 for e in cpu
    )


# ---------------------------------------------------------------------------------------------------- offline
def test_offline_dp2_matches_dp1_and_uses_both_replicas(tiny_qwen3: Path) -> None:
    llm = LLM(str(tiny_qwen3), **ENGINE_KWARGS)
    expected = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    del llm
    llm = LLM(str(tiny_qwen3), data_parallel_size=2, **ENGINE_KWARGS)
    client = llm.llm_engine.engine_core.client  # type: ignore[union-attr]
    processes = [c.process for c in client.clients]
    try:
        outs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == expected
        assert sum(client.num_routed) == len(PROMPTS) and all(client.num_routed), client.num_routed
        assert client.num_unfinished == [0, 0]
        (n2,) = llm.generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=4, seed=1), use_tqdm=False)
        assert len(n2.outputs) == 2
    finally:
        del llm, client
        gc.collect()  # garbage collection shuts the replicas down
    for p in processes:
        p.join(10)
        assert not p.is_alive()


# ---------------------------------------------------------------------------------------------------- served
def _replica_pids(server_pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"--multiprocessing-fork" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(child))
    return pids


def _metric(text: str, line_prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))


@pytest.fixture(scope="module")
def dp_server(
    tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory, inferd_server_factory: Any
) -> Iterator[Any]:
    srv = inferd_server_factory(tiny_qwen3, tmp_path_factory.mktemp("logs"), "-dp", "2", "--kv-cache-memory-bytes",
                                str(64 << 20))  # fmt: skip
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


def test_serve_dp2_spreads_concurrent_requests_over_both_replicas(dp_server: Any) -> None:
    base = dp_server.base_url
    body = {"model": "tiny", "max_tokens": 16, "temperature": 0.0, "ignore_eos": True}
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(httpx.post, f"{base}/v1/completions", json={**body, "prompt": p}, timeout=120)
            for p in PROMPTS
        ]
        same = [pool.submit(httpx.post, f"{base}/v1/completions", json={**body, "prompt": PROMPTS[0]}, timeout=120)
                for _ in range(4)]  # fmt: skip
        responses = [f.result() for f in futures + same]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert all(r.json()["choices"][0]["finish_reason"] == "length" for r in responses)
    texts = {r.json()["choices"][0]["text"] for r in [responses[0], *responses[len(PROMPTS) :]]}
    assert len(texts) == 1  # the same greedy answer from either replica
    text = httpx.get(f"{base}/metrics").text
    for engine in ("0", "1"):
        assert _metric(text, f'inferd:prefix_cache_queries_total{{engine="{engine}"') > 0, text
    assert _metric(text, "inferd:num_requests_running{") == 0
    assert "2 data-parallel replicas" in dp_server.log()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the replicas")
def test_killed_replica_turns_health_503_and_the_server_exits_nonzero(
    dp_server: Any, wait_unhealthy: Any
) -> None:
    base = dp_server.base_url
    pids = _replica_pids(dp_server.proc.pid)
    assert len(pids) == 2, pids
    body = {"prompt": "Tell me a long story", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(pids[1], signal.SIGKILL)
        wait_unhealthy(base, 1.0, "a replica died")
        rest = [line for line in lines if line.startswith("data: ")]  # the stream ends; it does not hang
    assert rest[-1] == "data: [DONE]" and '"error"' in rest[-2], rest[-3:]
    assert dp_server.proc.wait(30) not in (0, None)
    log = dp_server.log()
    assert "engine process died" in log and "Engine replica" in log
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in pids), "a replica outlived the server"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return False
