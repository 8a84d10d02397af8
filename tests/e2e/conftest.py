"""Fixtures for end-to-end server tests: a real ``python -m inferd serve`` process on a free loopback port, serving
the tiny random Qwen3 (with its byte-level BPE tokenizer and chat template) that tests/conftest.py builds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base_url: str
    api_key: str | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def _wait_unhealthy(base_url: str, within_s: float, what: str) -> None:
    """Return once /health stops answering 200 (503, or the server already gone); fail after ``within_s``."""
    import httpx

    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 503:
                return
        except httpx.TransportError:
            return  # already shut down: the probe fails just as well
        assert time.monotonic() - t0 < within_s, f"/health still 200 {within_s} s after {what}"
        time.sleep(0.02)


def start_server(model_dir: Path, log_dir: Path, *extra: str, api_key: str | None = None,
                 timeout: float = 300) -> ServerProcess:  # fmt: skip
    """``python -m inferd serve`` on a free loopback port; returns once /health says 200."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "inferd", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", "256", "--served-model-name", "tiny", "--seed", "0", *extra]  # fmt: skip
    if api_key:
        cmd += ["--api-key", api_key]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
        "HF_HUB_OFFLINE": "1",
    }
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", api_key, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"inferd serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"inferd serve not healthy after {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def wait_unhealthy() -> Any:
    """``_wait_unhealthy(base_url, within_s, what)``: wait until /health stops answering 200."""
    return _wait_unhealthy


@pytest.fixture(scope="session")
def inferd_server_factory() -> Any:
    """``start_server`` as a fixture, for tests that need a server with other flags."""
    return start_server


@pytest.fixture(scope="module")
def server(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tiny_qwen3, tmp_path_factory.mktemp("logs"), "--max-num-seqs", "64", api_key="e2e-key")
    yield srv
    assert srv.stop() == 0, srv.log()
