"""The HTTP app against a fake engine (same interface as AsyncLLM, no model): shapes, errors, auth, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from inferd.config import EngineArgs
from inferd.engine.core_types import SchedulerStats
from inferd.engine.stats import FinishedRequestStats, IterationStats
from inferd.outputs import CompletionOutput, Logprob, RequestOutput
from inferd.sampling_params import RequestOutputKind, SamplingParams
from inferd.server.app import build_app
from inferd.server.server_args import ServerArgs

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REPLY = "Hello world! This is inferd talking. "


def make_tokenizer() -> Any:
    """A byte-level tokenizer (one token per byte, no merges) with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


class FakeEngine:
    """AsyncLLM's interface: emits REPLY one byte-token per step (choice i starts i bytes later)."""

    def __init__(self, tokenizer: Any = None, delay: float = 0.0, max_model_len: int = 256) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
        self.model_config = SimpleNamespace(
            model="fake/tiny",
            max_model_len=max_model_len,
            served_model_names=("tiny", "tiny-alias"),
            max_logprobs=5,
            hf_config=SimpleNamespace(vocab_size=300),
        )
        self.generation_defaults: dict[str, Any] = {}
        self.errored = False
        self.delay = delay
        self.running: set[str] = set()
        self.aborted: set[str] = set()
        self.abort_requested: set[str] = set()
        self.calls: list[tuple[str | None, list[int], SamplingParams, str]] = []
        self.stat_loggers: list[Any] = []
        self.shut_down = False

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.running)

    @property
    def scheduler_stats(self) -> SchedulerStats:
        return SchedulerStats(num_running_reqs=len(self.running))

    async def generate(
        self,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str,
    ):
        if len(prompt_token_ids) + 1 > self.model_config.max_model_len:
            raise ValueError("prompt is too long for max_model_len")
        if (sampling_params.logprobs or 0) > self.model_config.max_logprobs:
            raise ValueError(f"logprobs must be at most {self.model_config.max_logprobs}")
        self.calls.append((prompt, list(prompt_token_ids), sampling_params, request_id))
        if prompt is not None and "RAISE" in prompt:
            raise RuntimeError("engine bug")
        sp = sampling_params
        budget = self.model_config.max_model_len - len(prompt_token_ids)
        max_tokens = budget if sp.max_tokens is None else min(sp.max_tokens, budget)
        sources = [self.tokenizer.encode((REPLY * 50)[i:], add_special_tokens=False) for i in range(sp.n)]
        texts = [""] * sp.n
        tokens: list[list[int]] = [[] for _ in range(sp.n)]
        logprobs: list[list[dict[int, Logprob]]] = [[] for _ in range(sp.n)]
        finish: list[str | None] = [None] * sp.n
        stop_reason: list[str | None] = [None] * sp.n
        self.running.add(request_id)
        done = False
        try:
            step = 0
            while not all(finish):
                await asyncio.sleep(self.delay)
                if (
                    request_id in self.abort_requested
                ):  # as AsyncLLM: abort() ends the stream with CancelledError
                    raise asyncio.CancelledError(f"request {request_id} aborted")
                deltas = []
                for i in range(sp.n):
                    if finish[i]:
                        continue
                    tok = sources[i][step]
                    piece = self.tokenizer.decode([tok])
                    tokens[i].append(tok)
                    pos = None
                    if sp.logprobs is not None:
                        pos = {tok: Logprob(-0.25, 1, piece)}
                        for r in range(2, sp.logprobs + 2):
                            alt = (tok + r) % 256
                            pos.setdefault(alt, Logprob(-float(r), r, self.tokenizer.decode([alt])))
                        logprobs[i].append(pos)
                    new_text = texts[i] + piece
                    for s in sp.stop or []:
                        if s in new_text:
                            cut = new_text.index(s) + (len(s) if sp.include_stop_str_in_output else 0)
                            new_text, finish[i], stop_reason[i] = new_text[:cut], "stop", s
                            break
                    if finish[i] is None and len(tokens[i]) >= max_tokens:
                        finish[i] = "length"
                    delta = new_text[len(texts[i]) :]
                    texts[i] = new_text
                    deltas.append(
                        CompletionOutput(
                            i, delta, [tok], None, [pos] if pos else None, finish[i], stop_reason[i]
                        )
                    )
                step += 1
                if sp.output_kind == RequestOutputKind.DELTA and deltas:
                    yield RequestOutput(request_id, prompt, prompt_token_ids, None, deltas, all(finish))
            self._record(len(prompt_token_ids), sum(map(len, tokens)), finish)
            done = True
            if sp.output_kind != RequestOutputKind.DELTA:
                outs = [
                    CompletionOutput(i, texts[i], tokens[i], -0.25 * len(tokens[i]),
                                     logprobs[i] if sp.logprobs is not None else None, finish[i], stop_reason[i])
                    for i in range(sp.n)
                ]  # fmt: skip
                prompt_lps = None
                if sp.prompt_logprobs is not None:
                    prompt_lps = [None] + [{t: Logprob(-1.0, 1, None)} for t in prompt_token_ids[1:]]
                yield RequestOutput(request_id, prompt, prompt_token_ids, prompt_lps, outs, True)
        finally:
            self.running.discard(request_id)
            if not done:
                self.aborted.add(request_id)

    def _record(self, num_prompt: int, num_gen: int, finish: list[str | None]) -> None:
        stats = IterationStats(
            num_prompt_tokens=num_prompt,
            num_generation_tokens=num_gen,
            time_to_first_tokens=[0.01],
            finished_requests=[
                FinishedRequestStats(f or "stop", 0.5, num_prompt, num_gen, 0.01) for f in finish
            ],
        )
        for logger in self.stat_loggers:
            logger.record(self.scheduler_stats, stats)

    async def abort(self, request_id: str) -> None:
        self.abort_requested.add(request_id)

    async def shutdown(self) -> None:
        self.shut_down = True


def make_factory(engine: FakeEngine, gate: threading.Event | None = None, error: Exception | None = None):
    async def factory(engine_args: EngineArgs, stat_loggers: list[Any]) -> FakeEngine:
        engine.stat_loggers = stat_loggers
        while gate is not None and not gate.is_set():
            await asyncio.sleep(0.01)
        if error is not None:
            raise error
        return engine

    return factory


def wait_ready(client: TestClient | httpx.Client, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("server never became ready")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture
def engine(tokenizer: Any) -> FakeEngine:
    return FakeEngine(tokenizer)


def _client(engine: FakeEngine, **server_kwargs: Any) -> TestClient:
    app = build_app(ServerArgs(**server_kwargs), EngineArgs(model="fake/tiny"), make_factory(engine))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(engine: FakeEngine):
    with _client(engine) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def oai(client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def assert_error(resp: httpx.Response, status: int, param: str | None = "<any>") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param != "<any>":
        assert err["param"] == param, err
    return err


def sse_payloads(text: str) -> list[Any]:
    """Parse an SSE body; asserts the wire format (data lines separated by blank lines, [DONE] last)."""
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[6:]) for e in events[:-1]]


# ---------------------------------------------------------------------------------------------------- lifecycle
def test_health_is_503_while_loading_then_200(engine: FakeEngine) -> None:
    gate = threading.Event()
    app = build_app(ServerArgs(), EngineArgs(model="fake/tiny"), make_factory(engine, gate=gate))
    with TestClient(app) as client:
        resp = client.get("/health")
        assert resp.status_code == 503 and resp.json()["status"] == "loading"
        assert_error(client.get("/v1/models"), 503)
        assert_error(client.post("/v1/completions", json={"prompt": "hi"}), 503)
        assert client.get("/version").status_code == 200
        assert client.get("/metrics").status_code == 200
        gate.set()
        wait_ready(client)
        assert client.get("/v1/models").status_code == 200
    assert engine.shut_down


def test_failed_load_reports_503_and_asks_to_exit(engine: FakeEngine) -> None:
    app = build_app(
        ServerArgs(), EngineArgs(model="fake/tiny"), make_factory(engine, error=ValueError("bad model path"))
    )
    fatal = threading.Event()
    app.state.inferd.on_fatal = fatal.set
    with TestClient(app) as client:
        assert fatal.wait(5)
        resp = client.get("/health")
        assert resp.status_code == 503 and resp.json()["status"] == "failed"
        assert "failed to start" in assert_error(client.get("/v1/models"), 503)["message"]


def test_dead_engine_and_draining_answer_503(client: TestClient, engine: FakeEngine) -> None:
    client.app.state.inferd.draining = True
    assert client.get("/health").status_code == 503
    assert (
        "shutting down" in assert_error(client.post("/v1/completions", json={"prompt": "x"}), 503)["message"]
    )
    client.app.state.inferd.draining = False
    engine.errored = True
    assert client.get("/health").json()["status"] == "dead"
    assert_error(
        client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 503
    )


# ---------------------------------------------------------------------------------------------------- models etc.
def test_models_version_tokenize(oai: openai.OpenAI, client: TestClient, tokenizer: Any) -> None:
    models = oai.models.list()
    assert [m.id for m in models.data] == ["tiny", "tiny-alias"]
    assert models.data[0].model_extra["max_model_len"] == 256
    assert client.get("/version").json()["version"]
    tok = client.post("/tokenize", json={"prompt": "héllo"}).json()
    assert tok["tokens"] == tokenizer.encode("héllo") and tok["count"] == len(tok["tokens"])
    assert tok["max_model_len"] == 256
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert tokenizer.decode(chat["tokens"]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert client.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "héllo"}
    assert_error(client.post("/detokenize", json={"tokens": [10**6]}), 400, "tokens")
    assert_error(client.post("/tokenize", json={}), 400, "prompt")


# ---------------------------------------------------------------------------------------------------- chat
def test_chat_non_streaming(oai: openai.OpenAI, engine: FakeEngine, tokenizer: Any) -> None:
    resp = oai.chat.completions.create(
        model="tiny-alias",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}],
        max_completion_tokens=5,
    )  # fmt: skip
    assert resp.object == "chat.completion" and resp.model == "tiny-alias"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == REPLY[:5]
    assert choice.finish_reason == "length"
    prompt, ids, params, _ = engine.calls[-1]
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids == tokenizer.encode(prompt, add_special_tokens=False)
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == len(ids) + 5
    assert params.max_tokens == 5 and params.output_kind == RequestOutputKind.FINAL_ONLY
    # Unset sampling fields stay unset, so the model's generation_config defaults can apply.
    assert "temperature" not in params._user_set and "top_p" not in params._user_set


def test_chat_streaming_with_usage_and_n(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    first_by_choice: dict[int, Any] = {}
    text = {0: "", 1: ""}
    finish: dict[int, str] = {}
    for ch in chunks[:-1]:
        assert ch.object == "chat.completion.chunk" and ch.usage is None and len(ch.choices) == 1
        c = ch.choices[0]
        first_by_choice.setdefault(c.index, c)
        text[c.index] += c.delta.content or ""
        if c.finish_reason:
            finish[c.index] = c.finish_reason
    assert all(c.delta.role == "assistant" for c in first_by_choice.values())
    assert text == {0: REPLY[:4], 1: REPLY[1:5]}
    assert finish == {0: "length", 1: "length"}
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 8
    assert len({ch.id for ch in chunks}) == 1


def test_chat_sse_wire_format(client: TestClient) -> None:
    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
        },
    )
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(resp.text)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in payloads[0]
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in payloads) == REPLY[:3]


def test_chat_logprobs_and_stop(oai: openai.OpenAI, engine: FakeEngine) -> None:
    resp = oai.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=8,
    )
    content = resp.choices[0].logprobs.content
    assert [c.token for c in content] == list(REPLY[:8])
    assert all(c.logprob == -0.25 and len(c.top_logprobs) == 2 for c in content)
    assert content[0].top_logprobs[0].token == "H" and content[0].bytes == [72]
    resp = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], stop=["world"], max_tokens=30, seed=7,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "ignore_eos": True, "min_tokens": 1,
                    "stop_token_ids": [3], "skip_special_tokens": False},
    )  # fmt: skip
    assert resp.choices[0].message.content == "Hello " and resp.choices[0].finish_reason == "stop"
    params = engine.calls[-1][2]
    assert (params.seed, params.top_k, params.min_p, params.repetition_penalty) == (7, 5, 0.1, 1.1)
    assert params.ignore_eos and params.min_tokens == 1 and params.stop_token_ids == [3]
    assert params.skip_special_tokens is False


def test_chat_template_override_and_kwargs(engine: FakeEngine) -> None:
    template = "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{{ suffix }}"
    with _client(engine, chat_template=template) as client:
        wait_ready(client)
        body = {"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
                "chat_template_kwargs": {"suffix": "!"}}  # fmt: skip
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert engine.calls[-1][0] == "[system:d][user:u]!"


# ---------------------------------------------------------------------------------------------------- completions
def test_completions_shapes(oai: openai.OpenAI, tokenizer: Any) -> None:
    resp = oai.completions.create(model="tiny", prompt="Say", max_tokens=6)
    assert resp.object == "text_completion" and resp.choices[0].text == REPLY[:6]
    assert resp.usage.prompt_tokens == 3 and resp.usage.completion_tokens == 6
    batch = oai.completions.create(model="tiny", prompt=["a", "bb"], max_tokens=2, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [REPLY[:2], REPLY[1:3]] * 2
    assert batch.usage.prompt_tokens == 3 and batch.usage.completion_tokens == 8
    ids = tokenizer.encode("Echo me")
    echoed = oai.completions.create(model="tiny", prompt=ids, max_tokens=2, echo=True, logprobs=2)
    lp = echoed.choices[0].logprobs
    assert echoed.choices[0].text == "Echo me" + REPLY[:2]
    assert lp.tokens == list("Echo me" + REPLY[:2])
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == list(range(9))
    assert len(lp.top_logprobs[-1]) == 2 and lp.token_logprobs[-1] == -0.25
    default = oai.completions.create(model="tiny", prompt="x")
    assert len(default.choices[0].text) == 16  # OpenAI's default max_tokens for completions


def test_completions_streaming(client: TestClient) -> None:
    body = {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 3, "stream": True, "echo": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    payloads = sse_payloads(client.post("/v1/completions", json=body).text)
    text: dict[int, str] = {0: "", 1: ""}
    for p in payloads[:-1]:
        (c,) = p["choices"]
        text[c["index"]] += c["text"]
        assert p["usage"] is None and p["object"] == "text_completion"
    assert text == {0: "a" + REPLY[:3], 1: "b" + REPLY[:3]}
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 6


# ---------------------------------------------------------------------------------------------------- errors
def _chat(**kw: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(temperature=-1), "temperature"),
        (_chat(top_p=0), "top_p"),
        (_chat(n=0), "n"),
        (_chat(max_tokens=0), "max_tokens"),
        (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (_chat(tool_choice="required"), "tool_choice"),
        (_chat(response_format={"type": "json_schema", "json_schema": {}}), "response_format"),
        (_chat(guided_json={"type": "no-such-type"}), "guided_json"),
        (_chat(functions=[{"name": "f"}]), "functions"),
        (_chat(logit_bias={"abc": 1}), "logit_bias"),
        (_chat(logit_bias={"100000": 1}), "logit_bias"),
        (_chat(top_logprobs=2), "top_logprobs"),
        (_chat(logprobs=True, top_logprobs=6), "top_logprobs"),
        (_chat(stream_options={"include_usage": True}), "stream_options"),
        (_chat(chat_template_kwargs={"tokenize": True}), "chat_template_kwargs"),
        (_chat(temperature="hot"), "temperature"),
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": "x" * 300}]}, "messages"),
    ],
)
def test_chat_errors_name_the_parameter(client: TestClient, body: dict[str, Any], param: str) -> None:
    err = assert_error(client.post("/v1/chat/completions", json=body), 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny"}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, -5]}, "prompt"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"prompt": "x", "stop": [""]}, "stop"),
        ({"prompt": "x" * 300}, "prompt"),
    ],
)
def test_completion_errors_name_the_parameter(client: TestClient, body: dict[str, Any], param: str) -> None:
    assert_error(client.post("/v1/completions", json=body), 400, param)


def test_malformed_requests(client: TestClient) -> None:
    err = assert_error(
        client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    assert "JSON" in err["message"]
    assert_error(client.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}),
                 400)  # fmt: skip
    assert_error(client.post("/v1/completions"), 400)
    long = assert_error(client.post("/v1/completions", json={"prompt": "x" * 300}), 400)
    assert long["code"] == "context_length_exceeded" and "256" in long["message"]
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_unknown_model_is_404_and_unknown_fields_are_ignored(client: TestClient) -> None:
    err = assert_error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404, "model")
    assert err["code"] == "model_not_found" and "tiny" in err["message"]
    ok = client.post("/v1/completions", json={"model": "", "prompt": "x", "max_tokens": 1, "frobnicate": 1})
    assert ok.status_code == 200 and ok.json()["model"] == "tiny"


def test_unexpected_error_is_500_for_that_request_only(client: TestClient) -> None:
    err = assert_error(client.post("/v1/completions", json={"prompt": "RAISE"}), 500)
    assert err["type"] == "server_error"
    assert client.post("/v1/completions", json={"prompt": "fine", "max_tokens": 1}).status_code == 200
    stream = client.post("/v1/completions", json={"prompt": "RAISE", "stream": True})
    assert stream.status_code == 200 and "server_error" in stream.text


# ---------------------------------------------------------------------------------------------------- auth, CORS
def test_api_key(engine: FakeEngine) -> None:
    with _client(engine, api_key="s3cret") as client:
        wait_ready(client)
        for path in ("/health", "/metrics", "/version"):
            assert client.get(path).status_code == 200
        for path in ("/v1/models", "/docs", "/openapi.json"):
            err = assert_error(client.get(path), 401)
            assert err["code"] == "invalid_api_key" and "s3cret" not in json.dumps(err)
        assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        good = openai.OpenAI(
            base_url="http://testserver/v1", api_key="s3cret", http_client=client, max_retries=0
        )
        assert good.completions.create(model="tiny", prompt="x", max_tokens=1).choices[0].text
        bad = openai.OpenAI(
            base_url="http://testserver/v1", api_key="nope", http_client=client, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_cors_closed_unless_allowed(engine: FakeEngine) -> None:
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with _client(engine) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=headers).headers
    with _client(engine, allowed_origins=("https://app.example",), api_key="k") as client:
        pre = client.options("/v1/completions", headers=headers)
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"


# ---------------------------------------------------------------------------------------------------- metrics
def test_metrics(client: TestClient) -> None:
    client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 2})
    text = client.get("/metrics").text
    for name in (
        "inferd:num_requests_running", "inferd:num_requests_waiting", "inferd:kv_cache_usage_perc",
        "inferd:prefix_cache_queries_total", "inferd:prefix_cache_hits_total", "inferd:num_preemptions_total",
        "inferd:time_to_first_token_seconds_bucket", "inferd:inter_token_latency_seconds_bucket",
        "inferd:e2e_request_latency_seconds_bucket",
    ):  # fmt: skip
        assert name in text, name
    assert 'inferd:request_success_total{finished_reason="length",model_name="fake/tiny"} 1.0' in text
    assert 'inferd:prompt_tokens_total{model_name="fake/tiny"} 3.0' in text
    assert 'inferd:generation_tokens_total{model_name="fake/tiny"} 2.0' in text


# ---------------------------------------------------------------------------------------------------- real sockets
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(engine: FakeEngine):
    """The app under a real uvicorn on a loopback port (in a thread), so clients can really disconnect."""
    import uvicorn

    app = build_app(ServerArgs(), EngineArgs(model="fake/tiny"), make_factory(engine))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                wait_ready(client)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        yield base
    server.should_exit = True
    thread.join(10)


def _wait_until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _running_gauge(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("inferd:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no inferd:num_requests_running")


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_aborts_the_request(live: str, engine: FakeEngine, stream: bool) -> None:
    engine.delay = 0.05
    body = {"model": "tiny", "prompt": "long", "max_tokens": 200, "stream": stream}
    if stream:
        with (
            httpx.Client(base_url=live, timeout=10) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{live}/v1/completions", json=body, timeout=0.5)
    assert _wait_until(lambda: len(engine.aborted) == 1 and not engine.running)
    assert _running_gauge(live) == 0


_SERVER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_server_app import FakeEngine, make_factory
from inferd.config import EngineArgs
from inferd.server.launcher import run_server
from inferd.server.server_args import ServerArgs

error = ValueError("no such model: fake/tiny") if {fail!r} else None
engine = FakeEngine(delay=0.05)
args = ServerArgs(host="127.0.0.1", port={port}, shutdown_timeout={timeout}, api_key="secret-key-123")
sys.exit(run_server(args, EngineArgs(model="fake/tiny"), make_factory(engine, error=error)))
"""


def _start_server(tmp_path: Path, timeout: float, fail: bool = False) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        _SERVER_SCRIPT.format(tests=str(Path(__file__).parent), port=port, timeout=timeout, fail=fail)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_health(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not healthy: {proc.poll()}")


@pytest.mark.parametrize(("timeout", "finish"), [(30.0, "length"), (0.5, "abort")])
def test_sigterm_drains_then_exits_0(tmp_path: Path, timeout: float, finish: str) -> None:
    proc, base = _start_server(tmp_path, timeout)
    try:
        _wait_health(base, proc)
        headers = {"Authorization": "Bearer secret-key-123"}
        body = {
            "model": "tiny",
            "prompt": "x",
            "max_tokens": 30 if finish == "length" else 400,
            "stream": True,
        }
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            with client.stream("POST", "/v1/completions", json=body) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                proc.send_signal(signal.SIGTERM)
                assert _wait_until(lambda: client.get("/health").status_code == 503)
                late = client.post("/v1/completions", json={"prompt": "y"})
                assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
                rest = [line for line in lines if line.startswith("data: {")]
            assert json.loads(rest[-1][6:])["choices"][0]["finish_reason"] == finish
        assert proc.wait(30) == 0
        log = proc.stdout.read().decode()
        assert "secret-key-123" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failed_load_exits_nonzero_with_a_clear_log(tmp_path: Path) -> None:
    proc, _ = _start_server(tmp_path, 1.0, fail=True)
    try:
        assert proc.wait(60) == 1
        log = proc.stdout.read().decode()
        assert "no such model: fake/tiny" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
