"""One request of the load test: build it at random, send it, maybe walk away, and judge how it ended.

Every request ends in exactly one ``Outcome``:
  complete      200 and a whole answer: each of the n choices has finish_reason stop/length, a stream ends with
                ``data: [DONE]``, token counts agree with max_tokens;
  disconnected  the client hung up on purpose before the answer was whole;
  rejected      503 with Retry-After (the server shedding load: a clear answer, not a loss);
  lost          no answer within the timeout, or the connection died under the client;
  error         any other status, an error event in a stream, or a malformed / incomplete answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

OUTCOMES = ("complete", "disconnected", "rejected", "lost", "error")
_FINISHED = frozenset({"stop", "length"})


@dataclass(slots=True)
class Workload:
    """What the server can take: prompt sizes fit ``max_model_len`` with room for ``max_tokens``."""

    model: str
    max_model_len: int
    max_tokens: int
    token_pool: list[int]  # valid token ids for token-id prompts
    words: list[str]
    tokens_per_word: float
    disconnect_rate: float
    stream_rate: float
    chat_rate: float
    max_n: int


@dataclass(slots=True)
class Plan:
    kind: str  # "chat" | "completion"
    stream: bool
    n: int
    max_tokens: int
    body: dict[str, Any]
    hang_up_after_chunks: int | None  # streaming: disconnect after this many events
    hang_up_after_s: float | None  # non-streaming: disconnect after this many seconds


@dataclass(slots=True)
class Result:
    outcome: str
    kind: str
    stream: bool
    latency: float
    completion_tokens: int = 0
    detail: str = ""


@dataclass(slots=True)
class _Seen:
    finish: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    events: int = 0
    done: bool = False


def plan_request(rng: random.Random, w: Workload) -> Plan:
    """A random request: chat or completion, streaming or not, n of 1..max_n, random prompt and output lengths."""
    kind = "chat" if rng.random() < w.chat_rate else "completion"
    stream = rng.random() < w.stream_rate
    n = 1 if rng.random() < 0.85 else rng.randint(2, max(2, w.max_n))
    max_tokens = rng.randint(1, w.max_tokens)
    room = max(1, w.max_model_len - max_tokens - 32)  # 32: the chat template's tokens
    body: dict[str, Any] = {"model": w.model, "max_tokens": max_tokens, "n": n, "stream": stream}
    if rng.random() < 0.5:
        body["ignore_eos"] = True
    if rng.random() < 0.5:
        body["temperature"] = 0.0
    else:
        body.update(temperature=0.8, seed=rng.randrange(1 << 31))
    if stream:
        body["stream_options"] = {"include_usage": True}
    if kind == "chat":
        num_words = rng.randint(1, max(1, int(room / (w.tokens_per_word * 1.5))))
        text = " ".join(rng.choice(w.words) for _ in range(num_words))
        body["messages"] = [{"role": "user", "content": text}]
        if rng.random() < 0.1:
            body.update(logprobs=True, top_logprobs=2)
    else:
        if w.token_pool and rng.random() < 0.5:
            body["prompt"] = [rng.choice(w.token_pool) for _ in range(rng.randint(1, room))]
        else:
            num_words = rng.randint(1, max(1, int(room / (w.tokens_per_word * 1.5))))
            body["prompt"] = " ".join(rng.choice(w.words) for _ in range(num_words))
        if rng.random() < 0.1:
            body["logprobs"] = 2
    hang_chunks = hang_s = None
    if rng.random() < w.disconnect_rate:
        if stream:
            hang_chunks = rng.randint(0, max_tokens)
        else:
            hang_s = rng.uniform(0.0, 0.05 * max_tokens)
    return Plan(kind, stream, n, max_tokens, body, hang_chunks, hang_s)


async def run_request(client: httpx.AsyncClient, plan: Plan, timeout: float) -> Result:
    """Send ``plan`` and classify how it ended; never raises (except cancellation of the caller)."""
    path = "/v1/chat/completions" if plan.kind == "chat" else "/v1/completions"
    start = time.perf_counter()

    def result(outcome: str, tokens: int = 0, detail: str = "") -> Result:
        return Result(outcome, plan.kind, plan.stream, time.perf_counter() - start, tokens, detail)

    try:
        if plan.stream:
            return await asyncio.wait_for(_streamed(client, path, plan, result), timeout)
        work = asyncio.ensure_future(client.post(path, json=plan.body))
        limit = timeout if plan.hang_up_after_s is None else min(timeout, plan.hang_up_after_s)
        done, _ = await asyncio.wait({work}, timeout=limit)
        if not done:
            work.cancel()  # httpx closes the connection: the server sees the client leave
            await asyncio.gather(work, return_exceptions=True)
            if plan.hang_up_after_s is not None and limit < timeout:
                return result("disconnected")
            return result("lost", detail=f"no answer in {timeout:g} s")
        return _judge_json(work.result(), plan, result)
    except asyncio.TimeoutError:
        return result("lost", detail=f"stream not finished in {timeout:g} s")
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError) as e:
        return result("lost", detail=f"{type(e).__name__}: {e}")
    except httpx.HTTPError as e:
        return result("error", detail=f"{type(e).__name__}: {e}")


def _judge_json(resp: httpx.Response, plan: Plan, result: Any) -> Result:
    if resp.status_code != 200:
        return _bad_status(resp.status_code, resp.headers, resp.text, result)
    try:
        body = resp.json()
        choices = body["choices"]
        finish = {c["index"]: c["finish_reason"] for c in choices}
        tokens = int(body["usage"]["completion_tokens"])
    except (ValueError, KeyError, TypeError) as e:
        return result("error", detail=f"malformed response: {e!r}: {resp.text[:200]}")
    return _judge(finish, tokens, plan, result)


def _bad_status(status: int, headers: Any, text: str, result: Any) -> Result:
    if status == 503 and headers.get("retry-after"):
        return result("rejected")
    return result("error", detail=f"HTTP {status}: {text[:200]}")


def _judge(finish: dict[int, str | None], tokens: int, plan: Plan, result: Any) -> Result:
    if set(finish) != set(range(plan.n)) or any(f not in _FINISHED for f in finish.values()):
        return result("error", tokens, f"choices/finish_reasons {finish} for n={plan.n}")
    if tokens > plan.n * plan.max_tokens:
        return result(
            "error", tokens, f"{tokens} completion tokens > n * max_tokens = {plan.n * plan.max_tokens}"
        )
    if all(f == "length" for f in finish.values()) and tokens != plan.n * plan.max_tokens:
        return result(
            "error",
            tokens,
            f"finish 'length' but {tokens} tokens for n * max_tokens = {plan.n * plan.max_tokens}",
        )
    return result("complete", tokens)


async def _streamed(client: httpx.AsyncClient, path: str, plan: Plan, result: Any) -> Result:
    seen = _Seen()
    async with client.stream("POST", path, json=plan.body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            return _bad_status(resp.status_code, resp.headers, text, result)
        if plan.hang_up_after_chunks == 0:
            return result("disconnected")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                seen.done = True
                break
            try:
                payload = json.loads(data)
            except ValueError:
                return result("error", detail=f"malformed event: {data[:200]}")
            if "error" in payload:
                return result("error", detail=f"error event: {data[:200]}")
            for choice in payload.get("choices") or ():
                if choice.get("finish_reason") is not None:
                    seen.finish[choice["index"]] = choice["finish_reason"]
            if payload.get("usage"):
                seen.tokens = int(payload["usage"]["completion_tokens"])
            seen.events += 1
            if plan.hang_up_after_chunks is not None and seen.events >= plan.hang_up_after_chunks:
                if len(seen.finish) < plan.n:
                    return result("disconnected")  # leaving the block closes the connection mid-stream
    if not seen.done:
        return result("error", seen.tokens, "stream ended without data: [DONE]")
    return _judge(seen.finish, seen.tokens, plan, result)
