"""`inferd bench load`: soak a running OpenAI-compatible server with concurrent clients and check that it keeps its
promises (docs/reliability.md).

Each of ``--clients`` clients sends requests back to back for ``--duration`` seconds: chat or completions,
streaming or not, random prompt and output lengths, n of 1..``--max-n``; ``--disconnect-rate`` of them hang up
part-way. The run passes when no request was lost or answered wrongly, the server's running and waiting gauges
and ``inferd:kv_cache_usage_perc`` are back to 0 afterwards, and resident memory after the warm-up grew by at most
``--rss-tolerance``. Exit status 0 when it passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from inferd.bench.load_requests import OUTCOMES, Result, Workload, plan_request, run_request
from inferd.bench.throughput import _emit

_WORDS = (
    "the quick brown fox jumps over lazy dog paris capital france berlin germany hello world how are you today "
    "fine thank numbers code add return story long short river mountain light night music open cloud"
).split()
_METRIC_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None, help="bearer token, if the server needs one")
    parser.add_argument("--model", default=None, help="model name to send (default: the server's first)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the memory baseline (default: 25%% of duration)",
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="output lengths are uniform in [1, this]")
    parser.add_argument(
        "--max-n", type=int, default=2, help="n is 1, or uniform in [2, this] for 15%% of requests"
    )
    parser.add_argument("--disconnect-rate", type=float, default=0.25, help="share of requests hung up early")
    parser.add_argument("--stream-rate", type=float, default=0.5, help="share of streaming requests")
    parser.add_argument(
        "--chat-rate", type=float, default=0.5, help="share of chat (vs completions) requests"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds before a request is lost"
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=30.0, help="seconds for the gauges to reach 0"
    )
    parser.add_argument(
        "--server-pid", type=int, default=None, help="measure RSS of this process and its children (/proc)"
    )
    parser.add_argument("--rss-tolerance", type=float, default=0.05, help="allowed RSS growth after warm-up")
    parser.add_argument("--allow-rejected", action="store_true", help="503 + Retry-After answers do not fail")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None)


# ---------------------------------------------------------------------------------------------------- probes
def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc); 0 when the process is gone."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(
                int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
            )
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration, ValueError):
            continue
    return total


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}`` plus ``{"name": sum over labels}``."""
    resp = await client.get("/metrics")
    resp.raise_for_status()
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        m = _METRIC_LINE.match(line)
        if m is None or line.startswith("#"):
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        out[name + labels] = value
        out[name] = out.get(name, 0.0) + value if labels else value
    return out


async def _workload(client: httpx.AsyncClient, args: argparse.Namespace) -> Workload:
    models = (await client.get("/v1/models")).raise_for_status().json()["data"]
    model = args.model or models[0]["id"]
    max_model_len = int(next((m.get("max_model_len") for m in models if m["id"] == model), None) or 2048)
    if args.max_tokens >= max_model_len // 2:
        raise ValueError(
            f"--max-tokens {args.max_tokens} leaves too little room in max_model_len {max_model_len}."
        )
    sample = " ".join(random.Random(args.seed).choice(_WORDS) for _ in range(200))
    tok = await client.post("/tokenize", json={"model": model, "prompt": sample})
    pool: list[int] = []
    per_word = 8.0  # pessimistic without /tokenize
    if tok.status_code == 200:
        pool = sorted(set(tok.json()["tokens"]))
        per_word = max(1.0, len(tok.json()["tokens"]) / 200)
    return Workload(model, max_model_len, args.max_tokens, pool, _WORDS, per_word, args.disconnect_rate,
                    args.stream_rate, args.chat_rate, args.max_n)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- run
async def _client_loop(
    cid: int, client: httpx.AsyncClient, w: Workload, args: argparse.Namespace, deadline: float
) -> list[Result]:
    rng = random.Random(args.seed * 100_003 + cid)
    results: list[Result] = []
    while time.monotonic() < deadline:
        results.append(await run_request(client, plan_request(rng, w), args.request_timeout))
    return results


async def _sample_rss(args: argparse.Namespace, client: httpx.AsyncClient, samples: list[tuple[float, int]],
                      t0: float, stop: asyncio.Event) -> None:  # fmt: skip
    while not stop.is_set():
        value = await _rss_now(args, client)
        if value:
            samples.append((time.monotonic() - t0, value))
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(1.0, args.duration / 60))
        except asyncio.TimeoutError:
            pass


async def _rss_now(args: argparse.Namespace, client: httpx.AsyncClient) -> int:
    if args.server_pid is not None:
        return rss_bytes(args.server_pid)
    try:  # the API server's own RSS, when its /metrics carries process_* metrics
        return int((await scrape(client)).get("process_resident_memory_bytes", 0))
    except httpx.HTTPError:
        return 0


async def _settle(client: httpx.AsyncClient, timeout: float) -> tuple[dict[str, float], float]:
    names = ("inferd:num_requests_running", "inferd:num_requests_waiting", "inferd:kv_cache_usage_perc")
    t0 = time.monotonic()
    while True:
        metrics = await scrape(client)
        if all(metrics.get(n, 0.0) == 0.0 for n in names) or time.monotonic() - t0 > timeout:
            return {n: metrics.get(n, float("nan")) for n in names}, time.monotonic() - t0
        await asyncio.sleep(0.2)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    async with httpx.AsyncClient(base_url=args.base_url.rstrip("/"), headers=headers, limits=limits,
                                 timeout=timeout) as client:  # fmt: skip
        w = await _workload(client, args)
        before = await scrape(client)
        warmup = args.warmup if args.warmup is not None else 0.25 * args.duration
        samples: list[tuple[float, int]] = []
        stop = asyncio.Event()
        t0 = time.monotonic()
        sampler = asyncio.create_task(_sample_rss(args, client, samples, t0, stop))
        deadline = t0 + args.duration
        per_client = await asyncio.gather(
            *(_client_loop(i, client, w, args, deadline) for i in range(args.clients))
        )
        elapsed = time.monotonic() - t0
        stop.set()
        await sampler
        end_state, settle_s = await _settle(client, args.settle_timeout)
        final_rss = await _rss_now(args, client)
        after = await scrape(client)
    results = [r for rs in per_client for r in rs]
    return _report(args, results, elapsed, warmup, samples, final_rss, end_state, settle_s, before, after)


def _report(args: argparse.Namespace, results: list[Result], elapsed: float, warmup: float,
            samples: list[tuple[float, int]], final_rss: int, end_state: dict[str, float], settle_s: float,
            before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    outcomes = Counter(r.outcome for r in results)
    complete = [r for r in results if r.outcome == "complete"]
    latencies = sorted(r.latency for r in complete)
    tokens = sum(r.completion_tokens for r in complete)
    server_finished = {  # what the server counted meanwhile, by finish reason (child requests of n > 1 apart)
        k.split('finished_reason="')[1].split('"')[0]: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith("inferd:request_success_total{") and 'finished_reason="' in k
    }
    rss = _rss_summary(samples, warmup, final_rss)
    failures = []
    for bad in ("lost", "error") + (() if args.allow_rejected else ("rejected",)):
        if outcomes[bad]:
            failures.append(f"{outcomes[bad]} request(s) {bad}")
    for name, value in end_state.items():
        if value != 0.0:
            failures.append(f"{name} is {value} after the run (expected 0)")
    if rss["growth"] is not None and rss["growth"] > args.rss_tolerance:
        failures.append(f"RSS grew {rss['growth']:.1%} after warm-up (tolerance {args.rss_tolerance:.0%})")
    if not complete:
        failures.append("no request completed")
    return {
        "benchmark": "load",
        "base_url": args.base_url,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "requests": len(results),
        "outcomes": {o: outcomes[o] for o in OUTCOMES},
        "by_kind": dict(Counter(f"{r.kind}{'-stream' if r.stream else ''}:{r.outcome}" for r in results)),
        "request_throughput": round(len(complete) / elapsed, 2),
        "output_throughput": round(tokens / elapsed, 1),
        "latency_s": {
            "median": round(statistics.median(latencies), 3) if latencies else None,
            "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
            if latencies
            else None,
        },
        "problems": sorted({f"{r.outcome}: {r.detail}" for r in results if r.outcome in ("lost", "error")})[
            :10
        ],
        "server_finished": server_finished,
        "end_state": end_state,
        "settle_s": round(settle_s, 2),
        "rss": rss,
        "passed": not failures,
        "failures": failures,
    }


def _rss_summary(samples: list[tuple[float, int]], warmup: float, final_rss: int) -> dict[str, Any]:
    after = [v for t, v in samples if t >= warmup]
    if not after:
        return {"baseline_mb": None, "max_mb": None, "final_mb": final_rss / 2**20 or None, "growth": None,
                "samples": len(samples)}  # fmt: skip
    baseline = after[0]
    peak = max([*after, final_rss])
    return {
        "baseline_mb": round(baseline / 2**20, 1),
        "max_mb": round(peak / 2**20, 1),
        "final_mb": round(final_rss / 2**20, 1),
        "growth": round((peak - baseline) / baseline, 4),
        "samples": len(samples),
        "series_mb": [(round(t), round(v / 2**20, 1)) for t, v in samples[:: max(1, len(samples) // 30)]],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the load test against ``args.base_url``; prints and returns the report (``report["passed"]``)."""
    if args.clients < 1 or args.duration <= 0:
        raise ValueError("--clients must be at least 1 and --duration positive.")
    if args.server_pid is not None and not os.path.exists(f"/proc/{args.server_pid}"):
        raise ValueError(f"--server-pid {args.server_pid}: no such process (or no /proc on this system).")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the report
    result = asyncio.run(_run(args))
    _emit(result, args.output_json)
    o = result["outcomes"]
    print(
        f"load: {result['requests']} requests from {result['clients']} clients in {result['duration_s']} s: "
        f"{o['complete']} complete, {o['disconnected']} disconnected, {o['rejected']} rejected, {o['lost']} lost, "
        f"{o['error']} errors; end state {result['end_state']}; RSS growth {result['rss']['growth']}; "
        f"{'PASSED' if result['passed'] else 'FAILED: ' + '; '.join(result['failures'])}"
    )
    return result
