"""Request models → SamplingParams, logprob and SSE formatting, stream merging: no HTTP, no engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inferd.outputs import Logprob
from inferd.sampling_params import RequestOutputKind
from inferd.server.chat_template import load_chat_template, to_template_messages
from inferd.server.errors import APIError
from inferd.server.logprobs import CompletionLogprobs, chat_logprobs
from inferd.server.protocol import ChatCompletionRequest, CompletionRequest
from inferd.server.streaming import SSE_DONE, merge_async_iterators, sse_event

USER = [{"role": "user", "content": "hi"}]


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=USER, **kw)


def params(req, max_tokens=None, logprobs=None):
    return req.build_sampling_params(
        max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=None, vocab_size=1000,
        output_kind=RequestOutputKind.DELTA,
    )  # fmt: skip


def test_unset_fields_keep_generation_config_defaults() -> None:
    sp = params(chat())
    assert sp.max_tokens is None  # chat without a limit: up to the context length
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"):
        assert name not in sp._user_set
    sp = sp.apply_defaults({"temperature": 0.6, "top_k": 20})
    assert (sp.temperature, sp.top_k) == (0.6, 20)
    sp = params(chat(temperature=0.0, top_k=5)).apply_defaults({"temperature": 0.6})
    assert sp.temperature == 0.0


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5, max_completion_tokens=7).requested_max_tokens == 7
    assert chat(max_tokens=5).requested_max_tokens == 5
    assert CompletionRequest(prompt="x").max_tokens == 16


def test_sampling_errors_name_the_parameter() -> None:
    for kw, name in [
        ({"top_k": -5}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ]:
        with pytest.raises(APIError) as exc:
            params(chat(**kw))
        assert exc.value.status_code == 400 and exc.value.param == name


def test_logit_bias_keys() -> None:
    sp = params(chat(logit_bias={"5": 2.5}))
    assert sp.logit_bias == {5: 2.5}
    with pytest.raises(APIError) as exc:
        params(chat(logit_bias={"five": 1.0}))
    assert exc.value.param == "logit_bias" and "'five'" in exc.value.message


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_completion_prompt_forms(prompt, expected) -> None:
    assert CompletionRequest(prompt=prompt).prompts() == expected


def test_supported_and_refused_fields() -> None:
    chat(tools=[{"type": "function"}], tool_choice="none").check_supported()
    chat(response_format={"type": "text"}, tool_choice="auto").check_supported()
    for kw, name in [  # tools and structured outputs: tests/unit/test_structured_output.py
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"guided_whitespace_pattern": r"\s*"}, "guided_whitespace_pattern"),
        ({"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
        ({"add_generation_prompt": True, "continue_final_message": True}, "continue_final_message"),
    ]:
        with pytest.raises(APIError) as exc:
            chat(**kw).check_supported()
        assert exc.value.param == name and exc.value.status_code == 400
    ChatCompletionRequest(messages=USER, unknown_field=1).check_supported()  # ignored like OpenAI


def test_template_messages() -> None:
    req = ChatCompletionRequest(
        messages=[
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
        ]
    )
    msgs = to_template_messages(req.messages)
    assert msgs[0] == {"role": "system", "content": "rules"}
    assert msgs[1] == {"role": "user", "content": "a\nb"}
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}
    assert msgs[3] == {"role": "tool", "content": "42", "tool_call_id": "1"}


def test_chat_template_argument(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0].content }}")
    assert load_chat_template(str(path)) == "{{ messages[0].content }}"
    assert load_chat_template("{{ 1 }}") == "{{ 1 }}"
    assert load_chat_template(None) is None
    with pytest.raises(ValueError, match="does not exist"):
        load_chat_template(str(tmp_path / "nope.jinja"))


def _position(chosen: int, chosen_rank: int, alts: dict[int, float]) -> dict[int, Logprob]:
    pos = {chosen: Logprob(-3.0 if chosen_rank > 1 else -0.1, chosen_rank, f"t{chosen}")}
    for rank, (tok, lp) in enumerate(alts.items(), start=1):
        pos.setdefault(tok, Logprob(lp, rank, f"t{tok}"))
    return pos


def test_chat_logprobs_rank_and_clamp() -> None:
    pos = _position(9, 5, {1: -0.5, 2: -1.0})
    (entry,) = chat_logprobs([9], [pos], 2, tokenizer=None)
    assert entry["token"] == "t9" and entry["logprob"] == -3.0 and entry["bytes"] == list(b"t9")
    assert [t["token"] for t in entry["top_logprobs"]] == ["t1", "t2"]
    inf = {4: Logprob(float("-inf"), 1, "x")}
    (entry,) = chat_logprobs([4], [inf], 0, tokenizer=None)
    assert entry["logprob"] == -9999.0 and entry["top_logprobs"] == []
    json.dumps(entry, allow_nan=False)


class _StubTokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i}" for i in ids)


def test_completion_logprobs_offsets_and_top() -> None:
    builder = CompletionLogprobs(2, tokenizer=_StubTokenizer())
    prompt = builder.build([7, 8], [None, _position(8, 1, {8: -0.1, 3: -2.0})])
    assert prompt["token_logprobs"][0] is None and prompt["top_logprobs"][0] is None
    out = builder.build([9], [_position(9, 3, {1: -0.5, 2: -1.0})])
    assert prompt["text_offset"] == [0, 2] and out["text_offset"] == [4]
    assert out["top_logprobs"][0] == {"t9": -3.0, "t1": -0.5, "t2": -1.0}  # the sampled token always appears


def test_sse_event_format() -> None:
    assert sse_event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"


async def test_merge_async_iterators_interleaves_and_closes() -> None:
    closed: list[int] = []

    async def gen(i: int, n: int, delay: float):
        try:
            for k in range(n):
                await asyncio.sleep(delay)
                yield (i, k)
        finally:
            closed.append(i)

    items = [x async for x in merge_async_iterators([gen(0, 3, 0.001), gen(1, 2, 0.002)])]
    assert sorted(items) == [(0, (0, 0)), (0, (0, 1)), (0, (0, 2)), (1, (1, 0)), (1, (1, 1))]
    closed.clear()
    merged = merge_async_iterators([gen(0, 100, 0.001), gen(1, 100, 0.001)])
    await merged.__anext__()
    await merged.aclose()
    assert sorted(closed) == [0, 1]
