"""`inferd bench serve`: online benchmark against any OpenAI-compatible server (ours, vLLM, llama.cpp), shaped
like `vllm bench serve`: streaming completions, TTFT / TPOT / ITL statistics and throughput."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from inferd.bench.datasets import BenchRequest, random_requests
from inferd.bench.throughput import _emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--model", default=None, help="model name to send (default: the server's first model)"
    )
    parser.add_argument("--api-key", default=None, help="bearer token, if the server needs one")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--input-len", type=int, default=None, help="default uniform in [100, 1024]")
    parser.add_argument("--output-len", type=int, default=None, help="default uniform in [100, 1024]")
    parser.add_argument("--max-token-id", type=int, default=10000, help="random prompt ids are in [0, this]")
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (Poisson); inf = all"
    )
    parser.add_argument("--max-concurrency", type=int, default=None, help="cap on requests in flight")
    parser.add_argument("--dataset-seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--output-json", default=None)


@dataclass(slots=True)
class _Result:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)
    error: str = ""


async def _one(client: Any, url: str, model: str, req: BenchRequest, timeout: float) -> _Result:
    body = {
        "model": model,
        "prompt": req.prompt_token_ids,
        "max_tokens": req.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    res = _Result()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, timeout=timeout) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            chunks = 0
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                payload = json.loads(data)
                if payload.get("usage") and payload["usage"].get("completion_tokens") is not None:
                    res.output_tokens = payload["usage"]["completion_tokens"]
                if not payload.get("choices"):
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    res.ttft = now - start
                else:
                    res.itl.append(now - last)
                last = now
                chunks += 1
            res.latency = time.perf_counter() - start
            res.output_tokens = res.output_tokens or chunks
            res.ok = True
    except Exception as e:  # the benchmark reports failures instead of stopping
        res.error = f"{type(e).__name__}: {e}"
    return res


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "mean": round(statistics.fmean(values) * scale, 3),
        "median": round(statistics.median(values) * scale, 3),
        "p99": round(p99 * scale, 3),
    }


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.base_url.rstrip("/")
    limits = httpx.Limits(max_connections=args.max_concurrency or 10000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=args.timeout) as client:
        model = args.model
        if model is None:
            r = await client.get(f"{base}/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        requests = random_requests(
            args.num_prompts,
            args.input_len,
            args.output_len,
            args.dataset_seed,
            max_token_id=args.max_token_id,
        )
        sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        rng = random.Random(args.dataset_seed)
        url = f"{base}/v1/completions"

        async def limited(req: BenchRequest) -> _Result:
            if sem is None:
                return await _one(client, url, model, req, args.timeout)
            async with sem:
                return await _one(client, url, model, req, args.timeout)

        tasks = []
        start = time.perf_counter()
        for req in requests:
            tasks.append(asyncio.create_task(limited(req)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(len(req.prompt_token_ids) for req, r in zip(requests, results) if r.ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    return {
        "benchmark": "serve",
        "base_url": base,
        "model": model,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": round(duration, 3),
        "request_throughput": round(len(ok) / duration, 3),
        "output_throughput": round(out_tokens / duration, 1),
        "total_token_throughput": round((in_tokens + out_tokens) / duration, 1),
        "ttft_ms": _stats([r.ttft for r in ok]),
        "tpot_ms": _stats(tpot),
        "itl_ms": _stats([x for r in ok for x in r.itl]),
        "e2el_ms": _stats([r.latency for r in ok]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = asyncio.run(_run(args))
    _emit(result, args.output_json)
    print(
        f"serve: {result['completed']} ok / {result['failed']} failed, {result['output_throughput']} output tok/s, "
        f"TTFT median {result['ttft_ms']['median']} ms, TPOT median {result['tpot_ms']['median']} ms"
    )
    return result
