"""A real ``python -m inferd serve`` process with a tiny random Qwen3, driven by the official openai client."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("inferd.engine.async_llm", reason="the engine (AsyncLLM) is not written yet")

MODEL = "tiny"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"}]
GREEDY: dict[str, Any] = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0, timeout=120)


@pytest.fixture
def aclient(server: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0, timeout=120
    )


def _headers(server: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def test_models_and_tokenize(client: openai.OpenAI, server: Any) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL and model.model_extra["max_model_len"] == 256
    tok = httpx.post(
        f"{server.base_url}/tokenize", json={"messages": MESSAGES}, headers=_headers(server)
    ).json()
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert chat.usage.prompt_tokens == tok["count"]
    text = httpx.post(
        f"{server.base_url}/detokenize", json={"tokens": tok["tokens"]}, headers=_headers(server)
    )
    assert text.json()["prompt"].startswith("<|im_start|>system\nYou are terse.<|im_end|>")


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, **GREEDY)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert full.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True},
            **GREEDY,
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=10, **GREEDY)
    streamed = client.completions.create(
        model=MODEL, prompt="The quick brown fox", max_tokens=10, stream=True, **GREEDY
    )
    assert "".join(c.choices[0].text for c in streamed) == full.choices[0].text
    assert full.usage.completion_tokens == 10


def test_same_text_as_offline_llm(client: openai.OpenAI, tiny_qwen3: Path) -> None:
    llm_module = pytest.importorskip("inferd.llm")
    from inferd.sampling_params import SamplingParams

    llm = llm_module.LLM(model=str(tiny_qwen3), dtype="float32", max_model_len=256, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    offline = llm.generate(["The quick brown fox"], params)[0].outputs[0].text
    served = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=10, **GREEDY)
    assert served.choices[0].text == offline


def test_n_and_seed(client: openai.OpenAI) -> None:
    sampled: dict[str, Any] = {"temperature": 1.0, "seed": 1, "extra_body": {"ignore_eos": True}}
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, n=2, **sampled)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    assert resp.usage.completion_tokens == 12
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, n=2, **sampled)
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]
    comp = client.completions.create(
        model=MODEL, prompt=["a", "b"], max_tokens=3, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in comp.choices] == [0, 1, 2, 3]


def test_stop_string(client: openai.OpenAI) -> None:
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=24, **GREEDY).choices[0].text
    match = re.search(r"[A-Za-z0-9]{2}", text[3:])
    if match is None:
        pytest.skip(f"random model produced no ASCII pair to stop on: {text!r}")
    stop = match.group(0)
    resp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=24, stop=[stop], **GREEDY)
    assert resp.choices[0].text == text[: text.index(stop)]
    assert resp.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=24, stop=[stop], stream=True, **GREEDY
    )
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_logprobs(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=3, **GREEDY
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(
            entry.top_logprobs[0].logprob, abs=1e-4
        )  # greedy picks the top one
    comp = client.completions.create(
        model=MODEL, prompt="Hello world", max_tokens=3, logprobs=2, echo=True, **GREEDY
    )
    lp = comp.choices[0].logprobs
    assert comp.choices[0].text.startswith("Hello world")
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == comp.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset)


async def test_32_concurrent_streams_complete(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=8, stream=True,
            **GREEDY,
        )  # fmt: skip
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(32)))
    assert all(finish == "length" for _, finish in results)


def _running(server: Any) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    match = re.search(r"^inferd:num_requests_running\{[^}]*\} (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_disconnect_frees_the_request(server: Any) -> None:
    body = {
        "model": MODEL,
        "prompt": "Tell me a long story",
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.Client(base_url=server.base_url, headers=_headers(server), timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 20
    while _running(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(server) == 0
    try:  # non-streaming: the client gives up while the request (8 long completions) still runs
        httpx.post(f"{server.base_url}/v1/completions", json={**body, "stream": False, "n": 8, "max_tokens": 240},
                   headers=_headers(server), timeout=0.3)  # fmt: skip
    except httpx.ReadTimeout:
        pass
    else:
        pytest.skip("the request finished before the client timed out; nothing was left to abort")
    deadline = time.monotonic() + 20
    while _running(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(server) == 0


def test_api_key_and_errors(server: Any, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    wrong = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.NotFoundError) as e404:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e404.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt=[5] * 300)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad_temp:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    assert bad_temp.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert tools.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=50)
    bad_json = httpx.post(
        f"{server.base_url}/v1/completions",
        content=b"{",
        headers={**_headers(server), "content-type": "application/json"},
    )
    assert bad_json.status_code == 400 and set(bad_json.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert client.completions.create(
        model=MODEL, prompt="still alive", max_tokens=1
    ).choices  # server still up


def test_startup_failure_exits_nonzero(tmp_path: Path, inferd_server_factory: Any) -> None:
    with pytest.raises(RuntimeError, match="exited with 1"):
        inferd_server_factory(tmp_path / "no-such-model", tmp_path, timeout=120)
