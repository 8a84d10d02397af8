"""Structured outputs, tool calling and reasoning through a real ``inferd serve`` (tiny random Qwen3) and the official
openai client: whatever the weights, constrained output parses and validates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

MODEL = "tiny"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}  # fewer tokens from a random model

# A Hermes-style template (as Qwen2.5 / Qwen3's): tools in the system turn, calls as <tool_call> JSON, results as
# <tool_response>; enable_thinking=false closes an empty think block, as Qwen3's does.
HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'system' and tools %}
{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{{ m.content or '' }}{% for tc in m.tool_calls %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}{% endif %}"""


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Rome"]
    days: int = Field(ge=1, le=7)


# Weather's schema without titles, and tools with short names: the tiny tokenizer spends a token per character,
# and the tools are part of the prompt.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "now"}},
]
# Makes the random model write a Hermes tool call, so tool_choice "auto" has one to parse.
FORCED_CALL = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "days": [1-7]\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def server(
    tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory, inferd_server_factory: Any
) -> Iterator[Any]:
    logs = tmp_path_factory.mktemp("tools-logs")
    template = logs / "hermes.jinja"
    template.write_text(HERMES_TEMPLATE)
    flags = ["--chat-template", str(template), "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
             "--reasoning-parser", "qwen3", "--max-model-len", "512"]  # fmt: skip
    srv = inferd_server_factory(tiny_qwen3, logs, *flags)
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    for seed in range(2):
        done = client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=Weather, temperature=1.0, seed=seed, max_tokens=150,
            extra_body=COMPACT,
        )  # fmt: skip
        choice = done.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Weather)
    stream = client.chat.completions.create(
        model=MODEL, messages=USER, temperature=1.0, seed=7, max_tokens=150, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA}},
        extra_body=COMPACT,
    )  # fmt: skip
    Weather.model_validate_json("".join(c.choices[0].delta.content or "" for c in stream if c.choices))


def test_choice_regex_and_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=USER, temperature=1.0, extra_body={"guided_choice": ["sunny", "rainy"]}
    )
    assert chat.choices[0].message.content in ("sunny", "rainy") and chat.choices[0].finish_reason == "stop"
    done = client.completions.create(
        model=MODEL,
        prompt="Code:",
        temperature=1.0,
        max_tokens=20,
        extra_body={"guided_regex": "[A-Z]{2}-[0-9]{3}"},
    )
    text = done.choices[0].text
    assert (
        len(text) == 6
        and text[:2].isupper()
        and text[3:].isdigit()
        and done.choices[0].finish_reason == "stop"
    )
    stream = client.completions.create(
        model=MODEL, prompt="Answer:", max_tokens=20, stream=True,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in stream) in ("yes", "no")


def test_invalid_constraints_are_400(client: openai.OpenAI) -> None:
    for kwargs, param in [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
        ({"extra_body": {"structured_outputs": {"grammar": "root ::= missing"}}}, "structured_outputs"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, **kwargs)
        assert exc.value.body["param"] == param, exc.value.body


def test_named_and_required_tool_calls(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    done = client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice=named, temperature=1.0, max_tokens=100, seed=1,
        extra_body=COMPACT,
    )  # fmt: skip
    (call,) = done.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.id and done.choices[0].finish_reason == "stop"
    Weather.model_validate_json(call.function.arguments)
    stream = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, tools=TOOLS, tool_choice=named, temperature=1.0, max_tokens=100, seed=1,
            stream=True, extra_body=COMPACT,
        )
    )  # fmt: skip
    deltas = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].type == "function" and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments  # same seed
    required = client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        temperature=1.0, max_tokens=100, seed=3, extra_body=COMPACT,
    )  # fmt: skip
    (call,) = required.choices[0].message.tool_calls
    assert required.choices[0].finish_reason == "tool_calls"
    if call.function.name == "get_weather":
        Weather.model_validate_json(call.function.arguments)
    else:
        assert call.function.name == "now" and json.loads(call.function.arguments) == {}


def test_auto_tool_call_round_trip(client: openai.OpenAI, server: Any) -> None:
    forced = {"guided_regex": FORCED_CALL}
    done = client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, temperature=1.0, max_tokens=120, extra_body=forced
    )
    message = done.choices[0].message
    (call,) = message.tool_calls
    assert done.choices[0].finish_reason == "tool_calls" and message.content is None
    args = Weather.model_validate_json(call.function.arguments)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, tools=TOOLS, max_tokens=120, extra_body=forced, stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function.name == "get_weather"
    Weather.model_validate_json("".join(d.function.arguments or "" for d in deltas))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The tools are rendered by the template; the call and its result go back to the model.
    without = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1, tool_choice="none")
    assert done.usage.prompt_tokens > without.usage.prompt_tokens + 50
    history = [
        *USER,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 C, sunny"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=8
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    rendered = httpx.post(
        f"{server.base_url}/tokenize", json={"messages": history, "return_token_strs": True}
    ).json()
    prompt = httpx.post(f"{server.base_url}/detokenize", json={"tokens": rendered["tokens"]}).json()["prompt"]
    assert f'"arguments": {json.dumps(args.model_dump())}' in prompt  # arguments as an object, not a string
    assert "<tool_response>\n22 C, sunny\n</tool_response>" in prompt


def test_reasoning_content(client: openai.OpenAI) -> None:
    forced = {"guided_regex": r"<think>[a-z]{3,8}</think>\n\n[A-Z][a-z]{2,6}"}
    done = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=60, extra_body=forced)
    message = done.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning.isalpha() and message.content.isalpha() and message.content[0].isupper()
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=60, extra_body=forced, stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed_reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert streamed_reasoning.isalpha() and "".join(d.content or "" for d in deltas).isalpha()
    off = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=60,
        extra_body={"guided_regex": "[A-Z][a-z]{2,6}", "chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    assert (
        off.choices[0].message.content.isalpha()
        and off.choices[0].message.model_extra["reasoning_content"] is None
    )


@pytest.mark.slow
def test_smollm2_gguf_structured_outputs() -> None:
    """The real SmolLM2-135M-Instruct (GPT-2 style BPE, 49k tokens). Greedy under a grammar that allows the model's
    own answer gives that answer (the mask removes nothing it wanted); a JSON schema gets filled sensibly."""
    from gguf_fixture import smollm2_gguf_path
    from inferd import LLM, SamplingParams
    from inferd.sampling_params import StructuredOutputsParams

    class Capital(BaseModel):
        model_config = ConfigDict(extra="forbid")
        city: str = Field(max_length=20)
        country: str = Field(max_length=20)

    llm = LLM(str(smollm2_gguf_path()), max_model_len=512, dtype="float32")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    own = "The capital of France is Paris."  # its unconstrained greedy answer
    choice = StructuredOutputsParams(choice=["Berlin is the capital of France.", own])
    schema = StructuredOutputsParams(json=Capital.model_json_schema(), disable_any_whitespace=True)
    outs = llm.chat(
        [question, question],
        [SamplingParams(temperature=0, max_tokens=24, structured_outputs=so) for so in (choice, schema)],
        use_tqdm=False,
    )
    assert outs[0].outputs[0].text == own and outs[0].outputs[0].finish_reason == "stop"
    answer = Capital.model_validate_json(outs[1].outputs[0].text)
    assert answer.city == "Paris" and outs[1].outputs[0].finish_reason == "stop"
