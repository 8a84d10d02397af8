"""Faults against a real ``inferd serve`` (tiny random Qwen3): an exception while serving one request fails that
request only; SIGTERM drains in-flight streams and exits 0; a killed engine process turns /health to 503 within a
second and the server exits non-zero."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)
KEY = "fault-key-0123"
HEADERS = {"Authorization": f"Bearer {KEY}"}
MARK = "FAULT-INJECTED"

# Imported at start-up by every Python process whose PYTHONPATH holds it (the server and its engine core): makes the
# frontend's output processing raise for requests whose prompt contains MARK, as a bug in one request would.
_SITECUSTOMIZE = f"""
from inferd.engine import output_processor as _op

_process_child = _op.OutputProcessor._process_child


def _faulty_process_child(self, child, out, now, result):
    if {MARK!r} in (child.parent.prompt or ""):
        raise RuntimeError("fault injected by the test")
    return _process_child(self, child, out, now, result)


_op.OutputProcessor._process_child = _faulty_process_child
"""


@pytest.fixture(scope="module")
def faulty_server(
    tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory, inferd_server_factory: Any
) -> Iterator[Any]:
    hook = tmp_path_factory.mktemp("fault-hook")
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
        srv = inferd_server_factory(tiny_qwen3, tmp_path_factory.mktemp("logs"), api_key=KEY)
    yield srv
    srv.stop()


def _stream(base: str, body: dict[str, Any], path: str = "/v1/completions") -> list[dict[str, Any]]:
    """The events of a streaming request (``[DONE]`` as the string "[DONE]")."""
    events: list[Any] = []
    with httpx.stream("POST", base + path, json={**body, "stream": True}, headers=HEADERS, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def _gauge(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_an_exception_in_one_request_fails_only_that_request(faulty_server: Any) -> None:
    base = faulty_server.base_url
    good = {"prompt": "The quick brown fox", "max_tokens": 24, "ignore_eos": True, "temperature": 0.0}
    bad = {**good, "prompt": f"{MARK} jumps"}
    with ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(_stream, base, good) for _ in range(4)]
        chats = [pool.submit(_stream, base, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24,
                                             "ignore_eos": True}, "/v1/chat/completions") for _ in range(2)]  # fmt: skip
        bad_stream = pool.submit(_stream, base, bad)
        bad_plain = pool.submit(httpx.post, f"{base}/v1/completions", json=bad, headers=HEADERS, timeout=120)
        plain = pool.submit(
            httpx.post, f"{base}/v1/completions", json={**good, "n": 2}, headers=HEADERS, timeout=120
        )
        for f in [*streams, *chats]:
            events = f.result()
            assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length", events[
                -3:
            ]
        events = bad_stream.result()
        assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"
        resp = bad_plain.result()
        assert resp.status_code == 500 and resp.json()["error"]["type"] == "server_error"
        ok = plain.result().json()
        assert [c["finish_reason"] for c in ok["choices"]] == ["length", "length"]
        assert ok["usage"]["completion_tokens"] == 48
    assert httpx.get(f"{base}/health").status_code == 200
    deadline = time.monotonic() + 20
    while _gauge(base, "inferd:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gauge(base, "inferd:num_requests_running") == 0
    assert _gauge(base, "inferd:kv_cache_usage_perc") == 0
    assert "failing that request" in faulty_server.log()


def test_sigterm_drains_in_flight_streams_then_exits_0(faulty_server: Any) -> None:
    base = faulty_server.base_url
    body = {"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=base, headers=HEADERS, timeout=120) as client:
        streams = [client.stream("POST", "/v1/completions", json=body) for _ in range(3)]
        lines = []
        for s in streams:
            resp = s.__enter__()
            it = resp.iter_lines()
            assert next(it).startswith("data: ")
            lines.append(it)
        faulty_server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while httpx.get(f"{base}/health").status_code != 503:
            assert time.monotonic() - t0 < 1.0, "/health still 200 a second after SIGTERM"
        late = client.post("/v1/completions", json={"prompt": "late"})
        assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
        for it, s in zip(lines, streams):
            events = [line for line in it if line.startswith("data: ")]
            assert (
                events[-1] == "data: [DONE]"
                and json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
            )
            s.__exit__(None, None, None)
    assert faulty_server.proc.wait(30) == 0
    assert KEY not in faulty_server.log()


def _engine_core_pid(server_pid: int) -> int:
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"--multiprocessing-fork" in cmdline and b"resource_tracker" not in cmdline:
                return int(child)
    raise AssertionError("no engine-core process found")


@pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the engine process"
)
def test_killed_engine_turns_health_503_and_the_server_exits_nonzero(
    tiny_qwen3: Path, tmp_path: Path, inferd_server_factory: Any, wait_unhealthy: Any
) -> None:
    srv = inferd_server_factory(tiny_qwen3, tmp_path)
    try:
        base = srv.base_url
        body = {"prompt": "Tell me a long story", "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(_engine_core_pid(srv.proc.pid), signal.SIGKILL)
            wait_unhealthy(base, 1.0, "the engine died")
            rest = [line for line in lines if line.startswith("data: ")]  # the stream ends; it does not hang
        assert rest[-1] == "data: [DONE]" and '"error"' in rest[-2], rest[-3:]
        assert srv.proc.wait(30) not in (0, None)
        assert "engine process died" in srv.log()
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
