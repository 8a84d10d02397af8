"""Structured outputs (xgrammar), tool-call and reasoning parsing, and the request fields that carry them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from inferd.sampling_params import SamplingParams, StructuredOutputsParams
from inferd.server.chat_outputs import ChatOutputParser, plan_tools, structured_outputs_for
from inferd.server.errors import APIError
from inferd.server.protocol import ChatCompletionRequest, CompletionRequest
from inferd.server.reasoning import Qwen3ReasoningParser
from inferd.server.server_args import ServerArgs
from inferd.server.tool_parsers import (
    HermesToolParser,
    Llama3JsonToolParser,
    NamedToolParser,
    RequiredToolParser,
    ToolParser,
)
from inferd.structured_output.manager import StructuredOutputManager

VOCAB = 352  # tests/conftest.py's tiny models (the tokenizer has 320 tokens)


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Rome", "Tokyo"]
    days: int = Field(ge=1, le=7)
    note: str = Field(max_length=6)
    ok: bool


SCHEMA = Weather.model_json_schema()
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": SCHEMA},
    },
    {"type": "function", "function": {"name": "noop"}},
]


# ------------------------------------------------------------------------------------------ params and requests
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "needs exactly one of"),
        ({"json": SCHEMA, "regex": "a"}, "got json, regex"),
        ({"json": "{not json"}, "structured_outputs.json is not valid JSON"),
        ({"json": {"type": "no-such-type"}}, "structured_outputs.json is not a valid JSON schema"),
        ({"regex": "(a"}, "structured_outputs.regex is not a valid regex"),
        ({"grammar": "root ::= undefined_rule"}, "structured_outputs.grammar is not a valid grammar"),
        ({"choice": []}, "structured_outputs.choice"),
        ({"choice": ["a", ""]}, "non-empty strings"),
    ],
)
def test_params_refuse_bad_constraints(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="structured_outputs") as exc:
        StructuredOutputsParams(**kwargs)
    assert fragment in str(exc.value)


def test_params_accept_each_kind_and_refuse_conflicts() -> None:
    for kwargs in (
        {"json": SCHEMA},
        {"json": json.dumps(SCHEMA)},
        {"json_object": True},
        {"regex": r"\d+"},
        {"choice": ["yes", 'say "no"']},
        {"grammar": 'root ::= "a" | "b"'},
        {"grammar": 'start: "a" | "b"'},  # Lark
    ):
        SamplingParams(structured_outputs=StructuredOutputsParams(**kwargs))
    for name in ("ignore_eos", "min_tokens"):
        with pytest.raises(ValueError, match=f"^{name} cannot be combined"):
            SamplingParams(structured_outputs=StructuredOutputsParams(regex="a"), **{name: 1})


def _chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **kw)


def test_request_fields_map_to_one_constraint() -> None:
    so = _chat(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}})
    assert so.structured_outputs_params().json == SCHEMA
    assert _chat(response_format={"type": "json_object"}).structured_outputs_params().json_object
    assert _chat(response_format={"type": "text"}).structured_outputs_params() is None
    assert _chat(guided_choice=["a", "b"]).structured_outputs_params().choice == ["a", "b"]
    assert CompletionRequest(prompt="x", guided_regex="a+").structured_outputs_params().regex == "a+"
    so2 = _chat(structured_outputs={"grammar": 'root ::= "x"', "disable_any_whitespace": True})
    assert so2.structured_outputs_params().disable_any_whitespace
    compact = _chat(
        response_format={"type": "json_object"}, structured_outputs={"disable_any_whitespace": True}
    )
    assert compact.structured_outputs_params().disable_any_whitespace  # an option for response_format
    for req, param, fragment in [
        (_chat(response_format={"type": "json_schema", "json_schema": {}}), "response_format", "schema"),
        (_chat(response_format={"type": "xml"}), "response_format", "'xml'"),
        (
            _chat(response_format={"type": "json_schema", "json_schema": {"schema": {"type": 3}}}),
            "response_format",
            "response_format.json_schema.schema is not a valid JSON schema",
        ),
        (_chat(guided_regex="(", guided_json=SCHEMA), "guided_regex", "one output constraint"),
        (_chat(guided_regex="(x"), "guided_regex", "guided_regex is not a valid regex"),
        (
            _chat(structured_outputs={"regex": "a", "whitespace_pattern": " "}),
            "structured_outputs",
            "whitespace",
        ),
    ]:
        with pytest.raises(APIError) as exc:
            req.structured_outputs_params()
        assert exc.value.status_code == 400 and exc.value.param == param, exc.value.message
        assert fragment in exc.value.message


def test_tool_choice_plans() -> None:
    auto = ServerArgs(enable_auto_tool_choice=True, tool_call_parser="hermes")
    assert plan_tools(_chat(tools=TOOLS), auto).mode == "auto"
    assert plan_tools(_chat(tools=TOOLS, tool_choice="none"), ServerArgs()).mode == "none"
    named = plan_tools(
        _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        ServerArgs(),
    )
    assert named.mode == "named" and named.schema == SCHEMA
    required = plan_tools(_chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False), ServerArgs())
    schema = required.schema
    assert schema["minItems"] == 1 and schema["maxItems"] == 1 and len(schema["items"]["anyOf"]) == 2
    for req, param in [
        (_chat(tools=TOOLS), "tools"),  # auto needs the server flags
        (_chat(tools=TOOLS, tool_choice="auto"), "tool_choice"),
        (_chat(tool_choice="required"), "tool_choice"),
        (_chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (_chat(tools=[{"type": "retrieval"}], tool_choice="none"), "tools[0].type"),
        (_chat(tools=[{"type": "function", "function": {}}], tool_choice="none"), "tools[0].function.name"),
    ]:
        with pytest.raises(APIError) as exc:
            plan_tools(req, ServerArgs())
        assert exc.value.status_code == 400 and exc.value.param == param, exc.value.message
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        req = _chat(tools=[bad_tool], tool_choice=choice)
        with pytest.raises(APIError, match="a function's parameters is not a valid JSON schema") as exc:
            structured_outputs_for(req, plan_tools(req, ServerArgs()), ServerArgs(), None)
        assert exc.value.param == "tools"
    both = _chat(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})
    with pytest.raises(APIError, match="one output constraint"):
        structured_outputs_for(both, plan_tools(both, ServerArgs()), ServerArgs(), None)
    compact = _chat(tools=TOOLS, tool_choice="required", structured_outputs={"disable_any_whitespace": True})
    so = structured_outputs_for(compact, plan_tools(compact, ServerArgs()), ServerArgs(), None)
    assert so.disable_any_whitespace and so.json["minItems"] == 1
    with pytest.raises(ValueError, match="--tool-call-parser"):
        ServerArgs(enable_auto_tool_choice=True)


# ------------------------------------------------------------------------------------------ the worker's manager
@pytest.fixture(scope="module")
def tokenizer(tiny_qwen3: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3)


def _sample_loop(
    manager: StructuredOutputManager,
    req_ids: list[str],
    steps: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, list[int]]:
    """Random logits, bitmask, sample; unconstrained rows must come through untouched."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[int]] = {r: [] for r in req_ids}
    active = list(req_ids)
    for _ in range(steps):
        if not active:
            break
        logits = torch.randn(len(active), VOCAB, generator=gen).to(dtype)
        before = logits.clone()
        manager.apply_bitmask(logits, active)
        for i, r in enumerate(active):
            if not manager.has_request(r):
                assert torch.equal(logits[i], before[i])
        tokens = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen).squeeze(1).tolist()
        for r, t in zip(active, tokens):
            assert manager.accept_token(r, t)
            out[r].append(t)
        active = [r for r in active if not manager.is_terminated(r)]
    return out


def test_manager_constrains_only_its_rows(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    manager = StructuredOutputManager(lambda: tokenizer, VOCAB, "cpu")
    manager.add_request("json", SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA)), eos)
    compact = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    manager.add_request("compact", SamplingParams(structured_outputs=compact), eos)
    manager.add_request(
        "choice", SamplingParams(structured_outputs=StructuredOutputsParams(choice=["oui", "non"])), eos
    )
    manager.add_request(
        "regex", SamplingParams(structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}")), eos
    )
    manager.add_request("free", SamplingParams(), eos)  # no grammar: never touched
    for dtype, seed in ((torch.float32, 0), (torch.bfloat16, 1)):
        for r in ("json", "compact", "choice", "regex"):
            manager.remove_request(r)
        manager.add_request(
            "json", SamplingParams(structured_outputs=StructuredOutputsParams(json=SCHEMA)), eos
        )
        manager.add_request("compact", SamplingParams(structured_outputs=compact), eos)
        so = StructuredOutputsParams(choice=["oui", "non"])
        manager.add_request("choice", SamplingParams(structured_outputs=so), eos)
        manager.add_request(
            "regex", SamplingParams(structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}")), eos
        )
        out = _sample_loop(manager, ["free", "json", "choice", "compact", "regex"], 300, seed, dtype)
        for r in ("json", "compact", "choice", "regex"):
            assert out[r][-1] == eos and manager.is_terminated(r), r  # the grammar ends with EOS
        text = {r: tokenizer.decode(out[r][:-1]) for r in out}
        Weather.model_validate_json(text["json"])
        assert json.loads(text["compact"]) == Weather.model_validate_json(text["compact"]).model_dump()
        assert ": " in text["compact"] and "\n" not in text["compact"]
        assert text["choice"] in ("oui", "non") and len(text["regex"]) == 3 and text["regex"].isdigit()
        assert len(out["free"]) == len(out["json"]) or not manager.is_terminated("free")


def test_manager_reasoning_gate_preemption_and_failure(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    manager = StructuredOutputManager(lambda: tokenizer, VOCAB, "cpu")
    start, end = 100, 101  # stand-ins for <think> / </think>
    so = StructuredOutputsParams(choice=["oui"], reasoning_token_ids=(start, end))
    manager.add_request("r", SamplingParams(structured_outputs=so), eos, prompt_token_ids=[5, 6])
    logits = torch.zeros(1, VOCAB)
    manager.apply_bitmask(logits, ["r"])
    assert torch.isfinite(logits).all()  # reasoning: free
    assert manager.accept_token("r", 7) and manager.accept_token("r", end)
    manager.apply_bitmask(logits, ["r"])
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and all("oui".startswith(tokenizer.decode([t])) for t in allowed)  # the grammar holds
    # Resumed after preemption: the same matcher continues (add_request is a no-op).
    manager.add_request("r", SamplingParams(structured_outputs=so), eos, [5, 6], [7, end])
    closed = SamplingParams(
        structured_outputs=StructuredOutputsParams(choice=["oui"], reasoning_token_ids=(start, end))
    )
    manager.add_request("closed", closed, eos, prompt_token_ids=[start, 9, end])  # enable_thinking=False
    logits = torch.zeros(2, VOCAB)
    manager.apply_bitmask(logits, ["r", "closed"])
    assert torch.equal(torch.isfinite(logits[0]), torch.isfinite(logits[1]))
    assert torch.isfinite(logits).sum() == 2 * len(allowed)
    # A grammar that fails to compile lets only EOS / stop tokens through, so the request ends.
    broken = StructuredOutputManager(lambda: None, VOCAB, "cpu")  # no tokenizer: compilation fails
    broken.add_request(
        "x", SamplingParams(stop_token_ids=[40], structured_outputs=StructuredOutputsParams(regex="a")), eos
    )
    logits = torch.zeros(1, VOCAB)
    broken.apply_bitmask(logits, ["x"])
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == sorted([eos, 40])


def test_llm_mixed_batch_with_preemption(tiny_qwen3: Path) -> None:
    """Constrained and unconstrained requests share batches; a KV cache too small for all of them preempts some,
    and their matchers carry on. The free request gives what it gives alone; the others validate."""
    from inferd import LLM

    llm = LLM(str(tiny_qwen3), max_model_len=128, num_gpu_blocks_override=9, block_size=16, seed=0)
    free = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = llm.generate(["The quick brown fox"], free, use_tqdm=False)[0].outputs[0].text
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    constrained = [
        SamplingParams(temperature=1.0, seed=i, max_tokens=100, structured_outputs=so) for i in range(3)
    ]
    outs = llm.generate(["The quick brown fox"] * 4, [free, *constrained], use_tqdm=False)
    assert llm.llm_engine.engine_core.scheduler.num_preemptions > 0
    assert outs[0].outputs[0].text == alone
    for out in outs[1:]:
        assert out.outputs[0].finish_reason == "stop"
        Weather.model_validate_json(out.outputs[0].text)


# ------------------------------------------------------------------------------------------ output parsers
def _stream(parser: ToolParser, text: str, seed: int) -> tuple[str, dict[int, dict[str, Any]]]:
    """Feed ``text`` in random pieces; returns the content and the calls rebuilt from the deltas."""
    rnd, i, content, calls = random.Random(seed), 0, "", {}
    pieces = []
    while i < len(text):
        n = rnd.randint(1, 5)
        pieces.append(text[i : i + n])
        i += n
    results = [parser.feed(p) for p in pieces] + [parser.finish()]
    for c, deltas in results:
        content += c
        for d in deltas:
            call = calls.setdefault(d["index"], {"arguments": ""})
            if "id" in d:
                assert "name" not in call and d["type"] == "function" and d["id"].startswith("call_")
                call["name"] = d["function"]["name"]
            call["arguments"] += d["function"].get("arguments", "")
    return content, calls


HERMES = (
    'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "n": [1, {"a": "}"}]}}\n'
    '</tool_call>\n<tool_call>\n{"arguments": {}, "name": "noop"}\n</tool_call>'
)
LLAMA = (
    '<|python_tag|>{"name": "get_weather", "parameters": {"q": "a;b"}}; {"name": "noop", "parameters": {}}'
)
REQUIRED = '[{"name": "get_weather", "parameters": {"city": "]"}}, {"name": "noop", "parameters": {}}]'


@pytest.mark.parametrize(
    ("make", "text", "content", "names"),
    [
        (HermesToolParser, HERMES, "Checking.\n", ["get_weather", "noop"]),
        (HermesToolParser, "No tools <tool here.", "No tools <tool here.", []),
        (Llama3JsonToolParser, LLAMA, None, ["get_weather", "noop"]),
        (Llama3JsonToolParser, "Plain {answer}.", "Plain {answer}.", []),
        (RequiredToolParser, REQUIRED, None, ["get_weather", "noop"]),
        (lambda: NamedToolParser("get_weather"), '{"city": "Rome"}', None, ["get_weather"]),
    ],
)
def test_tool_parsers_stream_what_they_extract(
    make: Any, text: str, content: str | None, names: list[str]
) -> None:
    whole_content, calls = make().extract(text)
    assert whole_content == content and [c["function"]["name"] for c in calls] == names
    for seed in range(4):
        streamed_content, streamed = _stream(make(), text, seed)
        assert (streamed_content or None) == content
        assert [streamed[i]["name"] for i in sorted(streamed)] == names
        for i, call in enumerate(calls):
            assert json.loads(streamed[i]["arguments"]) == json.loads(call["function"]["arguments"])


def test_malformed_hermes_call_stays_content() -> None:
    text = "<tool_call>\n{not json}\n</tool_call>"
    assert HermesToolParser().extract(text) == (text, [])


def test_reasoning_parser() -> None:
    text = "<think>\nhmm </thin> ok\n</think>\n\nAnswer <think> x"
    expected = ("\nhmm </thin> ok\n", "Answer <think> x")
    assert Qwen3ReasoningParser().extract(text) == expected
    for seed in range(4):
        parser, rnd, got, i = Qwen3ReasoningParser(), random.Random(seed), ["", ""], 0
        while i < len(text):
            n = rnd.randint(1, 4)
            for k, part in enumerate(parser.feed(text[i : i + n])):
                got[k] += part
            i += n
        for k, part in enumerate(parser.finish()):
            got[k] += part
        assert tuple(got) == expected
    no_think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # enable_thinking: false
    assert Qwen3ReasoningParser(no_think).extract("Hi") == (None, "Hi")
    assert Qwen3ReasoningParser("<|im_start|>assistant\n<think>\n").extract("why</think>Hi") == ("why", "Hi")
    assert Qwen3ReasoningParser().extract("<think>cut off") == ("cut off", None)


def test_reasoning_token_ids(tiny_qwen3: Path) -> None:
    """The grammar waits for </think> only where both delimiters are single tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3)
    assert Qwen3ReasoningParser.token_ids(tokenizer) is None
    tokenizer.add_tokens(["<think>", "</think>"])
    start, end = Qwen3ReasoningParser.token_ids(tokenizer)
    assert tokenizer.decode([start, end]) == "<think></think>"


def test_chat_output_parser_combines_reasoning_and_tools() -> None:
    args = ServerArgs(enable_auto_tool_choice=True, tool_call_parser="hermes", reasoning_parser="qwen3")
    plan = plan_tools(_chat(tools=TOOLS), args)
    text = "<think>use a tool</think>\n\n" + HERMES
    msg = ChatOutputParser(plan, args, "").message(text)
    assert msg["reasoning_content"] == "use a tool" and msg["content"] == "Checking.\n"
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather", "noop"]
    parser = ChatOutputParser(plan, args, "")
    deltas = [parser.delta(text[i : i + 3]) for i in range(0, len(text), 3)] + [parser.delta("", final=True)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "use a tool"
    assert parser.finish_reason("stop", parser.called) == "tool_calls"
    serial = ChatOutputParser(plan_tools(_chat(tools=TOOLS, parallel_tool_calls=False), args), args, "")
    assert len(serial.message(HERMES)["tool_calls"]) == 1
    named_plan = plan_tools(
        _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "noop"}}), args
    )
    cut = ChatOutputParser(named_plan, args, "")  # cut off while reasoning: no call, nothing streamed as one
    assert cut.message("<think>still thinking")["tool_calls"] == []
    streaming = ChatOutputParser(named_plan, args, "")
    assert "tool_calls" not in streaming.delta("<think>still") and not streaming.delta(
        " thinking", final=True
    ).get("tool_calls")
    done = ChatOutputParser(named_plan, args, "").message("<think>ok</think>\n{}")
    assert done["tool_calls"][0]["function"] == {"name": "noop", "arguments": "{}"}


def test_serve_flags() -> None:
    from inferd.cli import parse_args

    args = parse_args(
        [
            "serve",
            "m",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "llama3_json",
            "--reasoning_parser",
            "qwen3",
        ]
    )
    assert (args.enable_auto_tool_choice, args.tool_call_parser, args.reasoning_parser) == (
        True,
        "llama3_json",
        "qwen3",
    )
    from_env = parse_args(
        ["serve", "m"], {"INFERD_TOOL_CALL_PARSER": "hermes", "INFERD_ENABLE_AUTO_TOOL_CHOICE": "1"}
    )
    assert from_env.tool_call_parser == "hermes" and from_env.enable_auto_tool_choice
    with pytest.raises(SystemExit):
        parse_args(["serve", "m", "--tool-call-parser", "nope"])
