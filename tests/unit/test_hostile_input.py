"""Hostile clients against the request models and the HTTP app (fake engine, no model): never a 500, never a hang;
bounds (--max-request-body-bytes, --max-n, --max-waiting-requests) answer 413 / 400 / 503 + Retry-After; API keys,
CORS and the chat-template sandbox hold."""

from __future__ import annotations

import gc
import json
import logging
import math
from typing import Any

import pydantic
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server_app import FakeEngine, assert_error, make_factory, make_tokenizer, wait_ready

from inferd.cli import parse_args
from inferd.config import EngineArgs
from inferd.sampling_params import RequestOutputKind
from inferd.server.app import build_app
from inferd.server.errors import APIError
from inferd.server.limits import AdmissionControl
from inferd.server.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from inferd.server.server_args import ServerArgs

SPECIALS = [0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(2**63) - 1, math.nan, math.inf, -math.inf, 1e308, -0.0,
            "", "\ud800", "x" * 300, [], {}, None, True]  # fmt: skip
LEAF = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(SPECIALS)
)  # fmt: skip
JSON = st.recursive(LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)  # fmt: skip
TYPICAL = st.integers(-3, 300) | st.floats(-3, 3) | st.booleans() | st.text(max_size=8) | st.lists(st.integers(0, 400), max_size=3)  # fmt: skip
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"])
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": ROLES, "content": st.text(max_size=20) | JSON}), min_size=0, max_size=3
)
PROMPTS = st.text(max_size=30) | st.lists(st.integers(-5, 400), max_size=8) | st.lists(
    st.lists(st.integers(0, 300), min_size=1, max_size=4), max_size=3) | JSON  # fmt: skip


def _fields(model: type[pydantic.BaseModel], drop: str) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(set(model.model_fields) - {drop} | {"unknown_field", "max_tokens"})
    return st.dictionaries(st.sampled_from(names), TYPICAL | JSON, max_size=5)


CHAT_BODIES = st.builds(
    lambda m, extra: {"messages": m, **extra}, MESSAGES, _fields(ChatCompletionRequest, "messages")
)
COMPLETION_BODIES = st.builds(lambda p, extra: {"prompt": p, **extra}, PROMPTS, _fields(CompletionRequest, "prompt"))  # fmt: skip


def _build(req: Any) -> None:
    """What a handler does with a validated body before tokenization: the checks and the sampling params."""
    req.check_supported()
    max_tokens = req.requested_max_tokens if isinstance(req, ChatCompletionRequest) else req.max_tokens
    logprobs = (req.top_logprobs or 0) if isinstance(req, ChatCompletionRequest) and req.logprobs else None
    req.build_sampling_params(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=None, vocab_size=300,
                              output_kind=RequestOutputKind.DELTA)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(body=CHAT_BODIES | COMPLETION_BODIES | JSON)
def test_request_models_fail_only_with_client_errors(body: Any) -> None:
    for model in (ChatCompletionRequest, CompletionRequest, TokenizeRequest):
        try:
            req = model.model_validate(body)
        except pydantic.ValidationError:
            continue  # → 400 through the app's handler
        if model is TokenizeRequest:
            continue
        try:
            _build(req)
        except APIError as e:
            assert 400 <= e.status_code < 500, e.message


# ---------------------------------------------------------------------------------------------------- the app
def _client(engine: FakeEngine, **server_kwargs: Any) -> TestClient:
    app = build_app(ServerArgs(**server_kwargs), EngineArgs(model="fake/tiny"), make_factory(engine))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


def _post(client: TestClient, path: str, body: Any) -> Any:
    # Serialized here: NaN / Infinity and lone surrogates (as \\ud800 escapes) reach the server as a client sends them.
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def test_fuzzed_bodies_never_get_a_500(tokenizer: Any) -> None:
    with _client(FakeEngine(tokenizer), max_n=4) as client:
        wait_ready(client)

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=st.tuples(st.just("/v1/chat/completions"), CHAT_BODIES)
               | st.tuples(st.just("/v1/completions"), COMPLETION_BODIES)
               | st.tuples(st.sampled_from(["/tokenize", "/detokenize", "/v1/completions"]), JSON))  # fmt: skip
        def check(case: tuple[str, Any]) -> None:
            path, body = case
            resp = _post(client, path, body)
            assert resp.status_code in (200, 400, 404), (path, body, resp.status_code, resp.text[:300])
            if resp.status_code != 200:
                assert_error(resp, resp.status_code)
            elif "text/event-stream" in resp.headers.get("content-type", ""):
                assert resp.text.endswith("data: [DONE]\n\n") and '"server_error"' not in resp.text, (
                    resp.text[-300:]
                )

        check()


@pytest.fixture
def client(tokenizer: Any):
    with _client(FakeEngine(tokenizer), max_request_body_bytes=4096, max_n=4, max_waiting_requests=8) as c:
        wait_ready(c)
        yield c


def _raw(client: TestClient, body: bytes, path: str = "/v1/completions") -> Any:
    return client.post(path, content=body, headers={"content-type": "application/json"})


def test_hostile_bodies_get_clear_4xx(client: TestClient) -> None:
    big = assert_error(_raw(client, b'{"prompt": "' + b"a" * 5000 + b'"}'), 413)
    assert big["code"] == "request_too_large" and "--max-request-body-bytes" in big["message"]
    chunked = client.post("/v1/completions", content=iter([b'{"prompt": "', b"a" * 5000, b'"}']),
                          headers={"content-type": "application/json"})  # fmt: skip
    assert_error(chunked, 413)
    assert "parsed" in assert_error(_raw(client, b"[" * 2000 + b"]" * 2000), 400)["message"]  # deep nesting
    assert_error(_raw(client, b'{"prompt": "\xff\xfe caf\xe9"}'), 400)  # not UTF-8
    assert_error(_raw(client, b'{"prompt": "x", "temperature": 1' + b"0" * 3000 + b"}"), 400, "temperature")
    surrogate = assert_error(_raw(client, b'{"messages": [{"role": "user", "content": "a\\udc00"}]}',
                                  "/v1/chat/completions"), 400, "messages[0].content")  # fmt: skip
    assert "surrogate" in surrogate["message"]
    assert_error(_raw(client, b'{"prompt": "x", "stop": ["\\ud800"]}'), 400, "stop[0]")
    assert_error(_raw(client, b'{"prompt": "x", "temperature": NaN}'), 400, "temperature")
    assert_error(_raw(client, b'{"prompt": "x", "top_p": Infinity}'), 400, "top_p")
    assert_error(_raw(client, b'{"prompt": "x", "logit_bias": {"3": -Infinity}}'), 400, "logit_bias")
    assert_error(_raw(client, b'{"prompt": "x", "seed": 18446744073709551616}'), 400, "seed")
    assert_error(_raw(client, b'{"prompt": "x", "n": 1000000000}'), 400, "n")
    assert_error(_raw(client, b'{"prompt": "x", "logprobs": 1000000000}'), 400, "logprobs")
    assert_error(
        _raw(client, b'{"prompt": [[1], [2], [3]], "n": 3}'), 400, "prompt"
    )  # 9 sequences > 8 queued
    assert_error(_raw(client, b'{"prompt": "x", "max_tokens": -5}'), 400, "max_tokens")
    ok = _raw(
        client, b'{"prompt": "x", "max_tokens": 100000000000000000000, "seed": -5, "frobnicate": {"a": 1}}'
    )
    assert (
        ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
    )  # unknown fields ignored


def test_unparseable_numbers_without_a_body_limit(tokenizer: Any) -> None:
    with _client(FakeEngine(tokenizer), max_request_body_bytes=0) as client:
        wait_ready(client)
        # Python refuses integers of more than 4300 digits while parsing JSON: a 400, not a 500.
        assert_error(_raw(client, b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}"), 400)


def test_full_waiting_queue_answers_503_with_retry_after(tokenizer: Any) -> None:
    engine = FakeEngine(tokenizer, delay=0.02)
    type(engine).scheduler_stats = property(lambda self: None)  # nothing reported running: all admitted wait
    with _client(engine, max_waiting_requests=2) as client:
        wait_ready(client)
        body = {"prompt": "x", "max_tokens": 200, "stream": True}
        with client.stream("POST", "/v1/completions", json={**body, "n": 2}) as first:
            assert first.status_code == 200
            full = client.post("/v1/completions", json={"prompt": "y", "max_tokens": 1})
            err = assert_error(full, 503)
            assert full.headers["retry-after"] == "1" and err["code"] == "server_overloaded"
        assert client.post("/v1/completions", json={"prompt": "y", "max_tokens": 1}).status_code == 200


def test_admission_places_are_released_even_if_a_stream_never_starts() -> None:
    control = AdmissionControl(max_waiting=3, max_n=4, running=lambda: 0)
    held = control.admit(2)
    control.admit(1)  # dropped at once, as a stream the client abandoned before it started
    gc.collect()
    assert control.admitted == 2
    with pytest.raises(APIError) as e:
        control.admit(2)
    assert e.value.status_code == 503 and e.value.headers == {"Retry-After": "1"}
    held.release()
    held.release()
    assert control.admitted == 0
    with pytest.raises(APIError, match="--max-n"):
        control.check_n(5)


# ---------------------------------------------------------------------------------------------------- security
def test_several_api_keys_and_protected_metrics(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with _client(FakeEngine(tokenizer), api_key=("key-one", "key-two"), metrics_require_auth=True) as client:
        wait_ready(client)
        for key in ("key-one", "key-two"):
            assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/models", headers={"X-Api-Key": "key-two"}).status_code == 200
        for headers in ({}, {"Authorization": "Bearer key-three"}, {"Authorization": "Basic key-one"},
                        {"Authorization": "Bearer key-one key-two"}):  # fmt: skip
            err = assert_error(client.get("/v1/models", headers=headers), 401)
            assert "key-" not in json.dumps(err)
        assert client.get("/health").status_code == 200 and client.get("/version").status_code == 200
        assert_error(client.get("/metrics"), 401)
        assert client.get("/metrics", headers={"Authorization": "Bearer key-one"}).status_code == 200
        for path in ("/docs", "/redoc", "/openapi.json", "/tokenize", "/nothing", "/health/"):
            assert client.get(path).status_code == 401, path
    assert "key-one" not in caplog.text and "key-two" not in caplog.text
    assert "key-one" not in repr(ServerArgs(api_key=("key-one",)))


def test_api_key_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    ns = parse_args(["serve", "m", "--api-key", "a", "b", "--metrics-require-auth"], environ={})
    assert ns.api_key == ["a", "b"] and ns.metrics_require_auth
    assert parse_args(["serve"], environ={"INFERD_API_KEY": "a,b"}).api_key == ["a", "b"]
    defaults = parse_args(["serve"], environ={})
    assert defaults.trust_remote_code is False and defaults.allowed_origins is None
    assert (defaults.max_request_body_bytes, defaults.max_n, defaults.max_waiting_requests) == (
        8 << 20,
        128,
        1024,
    )
    assert (
        parse_args(["serve", "--max-request-body-bytes", "1m"], environ={}).max_request_body_bytes == 1 << 20
    )
    with pytest.raises(ValueError, match="api_key"):
        ServerArgs(api_key=("a", ""))


def test_cors_stays_closed_without_allowed_origins(tokenizer: Any) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with _client(FakeEngine(tokenizer)) as client:
        wait_ready(client)
        pre = client.options("/v1/completions", headers=headers)
        assert "access-control-allow-origin" not in pre.headers
        assert "access-control-allow-origin" not in client.get("/v1/models", headers=headers).headers
    with _client(FakeEngine(tokenizer), allowed_origins=("https://app.example",)) as client:
        wait_ready(client)
        pre = client.options("/v1/completions", headers=headers)
        assert pre.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
        "{% for m in messages %}{{ m.update({'role': 'system'}) }}{% endfor %}",
    ],
)
def test_chat_templates_render_in_a_sandbox(tokenizer: Any, template: str) -> None:
    with _client(FakeEngine(tokenizer), chat_template=template) as client:
        wait_ready(client)
        resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert_error(resp, 400, "messages")
        assert "pwned" not in resp.text
