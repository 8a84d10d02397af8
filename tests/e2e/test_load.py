"""The CI version of the soak (docs/reliability.md has the long one): ``inferd bench load`` drives a real
``inferd serve`` (tiny random Qwen3) with 50 concurrent clients for 60 s: streaming and not, chat and completions,
random lengths, n up to 2, a quarter of the clients hanging up part-way. Every request must end complete or
disconnected, the server must end with nothing running, waiting or held in the KV cache, and its resident memory
(API server + engine core) must stay within 5% after the warm-up."""

from __future__ import annotations

from typing import Any

import pytest

from inferd.bench import load
from inferd.cli import parse_args

CLIENTS = 50
DURATION = 60


@pytest.mark.timeout(300)
def test_50_clients_for_a_minute_lose_nothing_and_leak_nothing(server: Any, tmp_path: Any) -> None:
    args = parse_args(
        ["bench", "load", "--base-url", server.base_url, "--api-key", server.api_key, "--clients", str(CLIENTS),
         "--duration", str(DURATION), "--warmup", "20", "--max-tokens", "32", "--disconnect-rate", "0.25",
         "--server-pid", str(server.proc.pid), "--request-timeout", "120", "--output-json", str(tmp_path / "load.json")],
        environ={},
    )  # fmt: skip
    report = load.run(args)
    outcomes = report["outcomes"]
    assert outcomes["lost"] == 0 and outcomes["error"] == 0 and outcomes["rejected"] == 0, report["problems"]
    assert outcomes["complete"] >= CLIENTS and outcomes["disconnected"] > 0, outcomes
    assert report["end_state"] == {
        "inferd:num_requests_running": 0.0,
        "inferd:num_requests_waiting": 0.0,
        "inferd:kv_cache_usage_perc": 0.0,
    }
    assert report["rss"]["growth"] is not None and report["rss"]["growth"] <= 0.05, report["rss"]
    assert report["passed"], report["failures"]
    assert server.proc.poll() is None
