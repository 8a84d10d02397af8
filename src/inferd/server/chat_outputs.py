"""Tools and reasoning of one chat request: ``tools`` / ``tool_choice`` checked and turned into the grammar that
forces a call, and each choice's output split into ``reasoning_content``, ``content`` and ``tool_calls``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferd.sampling_params import StructuredOutputsParams
from inferd.server.errors import bad_request
from inferd.server.protocol import ChatCompletionRequest
from inferd.server.reasoning import REASONING_PARSERS, Qwen3ReasoningParser
from inferd.server.server_args import ServerArgs
from inferd.server.tool_parsers import (
    TOOL_PARSERS,
    NamedToolParser,
    RequiredToolParser,
    ToolParser,
    merge_call_deltas,
)


@dataclass(frozen=True)
class ToolPlan:
    """How a request uses tools: ``mode`` is "none", "auto", "required" or "named" (``name`` set)."""

    mode: str
    tools: list[dict[str, Any]] | None  # for the chat template (None: render without tools)
    name: str | None = None
    schema: dict[str, Any] | None = None  # the JSON schema forcing required / named calls
    parallel: bool = True


def plan_tools(req: ChatCompletionRequest, args: ServerArgs) -> ToolPlan:
    """Check ``tools`` / ``tool_choice`` against the server's flags; raises a 400 ``APIError`` naming the
    parameter to change."""
    tools = req.tools or None
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    functions = _check_tools(tools) if tools else {}
    parallel = req.parallel_tool_calls is not False
    if choice == "none":
        return ToolPlan("none", tools)
    if not tools:
        raise bad_request(
            f"tool_choice {choice!r} needs tools; send the functions in 'tools'.", "tool_choice"
        )
    if choice == "auto":
        if not (args.enable_auto_tool_choice and args.tool_call_parser):
            raise bad_request(
                "tool_choice 'auto' needs the server started with --enable-auto-tool-choice and "
                "--tool-call-parser; send tool_choice 'none', 'required' or a named function instead.",
                "tools" if req.tool_choice is None else "tool_choice",
            )
        return ToolPlan("auto", tools, parallel=parallel)
    if choice == "required":
        items = [
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": params},
                "required": ["name", "parameters"],
            }
            for name, params in functions.items()
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if not parallel:
            schema["maxItems"] = 1
        return ToolPlan("required", tools, schema=schema, parallel=parallel)
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type", "function") != "function" or not isinstance(name, str):
            raise bad_request(
                "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}.",
                "tool_choice",
            )
        if name not in functions:
            raise bad_request(
                f"tool_choice names the function {name!r}, which is not in tools ({', '.join(functions)}).",
                "tool_choice",
            )
        return ToolPlan("named", tools, name=name, schema=functions[name])
    raise bad_request(
        f"tool_choice must be 'none', 'auto', 'required' or a named function; got {choice!r}.", "tool_choice"
    )


def _check_tools(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name → parameters schema of each function tool; 400 naming the bad entry."""
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise bad_request(
                f"tools[{i}] must be a function tool ({{'type': 'function', ...}}).", f"tools[{i}].type"
            )
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(
                f"tools[{i}].function.name must be a non-empty string.", f"tools[{i}].function.name"
            )
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise bad_request(
                f"tools[{i}].function.parameters must be a JSON schema object.",
                f"tools[{i}].function.parameters",
            )
        functions[fn["name"]] = params
    return functions


def reasoning_parser_for(args: ServerArgs) -> type[Qwen3ReasoningParser] | None:
    return REASONING_PARSERS[args.reasoning_parser] if args.reasoning_parser else None


class ChatOutputParser:
    """One choice's output → message fields. Streaming: :meth:`delta` per new text (``final`` on the last);
    whole output: :meth:`message`. Reasoning is split off first; the rest goes to the tool parser (if any).
    Without tools or a reasoning parser, the content is the text unchanged."""

    def __init__(self, plan: ToolPlan, args: ServerArgs, prompt: str) -> None:
        reasoning_cls = reasoning_parser_for(args)
        self.reasoning = reasoning_cls(prompt) if reasoning_cls is not None else None
        self.plan = plan
        self.tools: ToolParser | None = None
        if plan.mode == "auto":
            assert args.tool_call_parser is not None
            self.tools = TOOL_PARSERS[args.tool_call_parser]()
        elif plan.mode == "required":
            self.tools = RequiredToolParser()
        elif plan.mode == "named":
            assert plan.name is not None
            self.tools = NamedToolParser(plan.name)
        self.called = False  # a tool call was sent (streaming)

    def finish_reason(self, reason: str | None, called: bool) -> str | None:
        """OpenAI's "tool_calls" when the model stopped after calling tools by its choice (auto / required)."""
        if reason == "stop" and called and self.plan.mode in ("auto", "required"):
            return "tool_calls"
        return reason

    def message(self, text: str) -> dict[str, Any]:
        """The assistant message of a whole output."""
        reasoning, content = (None, text) if self.reasoning is None else self.reasoning.extract(text)
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            msg["reasoning_content"] = reasoning
        if self.tools is not None:
            content, calls = self.tools.extract(content or "")
            if not self.plan.parallel:
                calls = calls[:1]
            msg["content"] = content
            msg["tool_calls"] = calls
            self.called = bool(calls)
        elif content is None and self.reasoning is None:
            msg["content"] = ""
        return msg

    def delta(self, text: str, final: bool = False) -> dict[str, Any]:
        """Delta fields for new output ``text`` (empty while everything is held back); ``final`` on the last
        call flushes what was held back."""
        reasoning, content = "", text
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(text)
            if final:
                more_reasoning, more_content = self.reasoning.finish()
                reasoning, content = reasoning + more_reasoning, content + more_content
        out: dict[str, Any] = {}
        if reasoning:
            out["reasoning_content"] = reasoning
        calls: list[dict[str, Any]] = []
        if self.tools is not None:
            content, calls = self.tools.feed(content)
            if final:
                more_content, more_calls = self.tools.finish()
                content += more_content
                calls = merge_call_deltas(calls + more_calls)
            if not self.plan.parallel:
                calls = [c for c in calls if c["index"] == 0]
        if content:
            out["content"] = content
        if calls:
            out["tool_calls"] = calls
            self.called = True
        return out


def structured_outputs_for(
    req: ChatCompletionRequest, plan: ToolPlan, args: ServerArgs, tokenizer: Any
) -> StructuredOutputsParams | None:
    """The request's grammar: a forced tool call's or the response format's (400 when both are asked for). With
    a reasoning parser it applies only after the model's reasoning. Runs xgrammar: call it off the event loop."""
    so = req.structured_outputs_params(plan.schema)
    reasoning_cls = reasoning_parser_for(args)
    if so is not None and reasoning_cls is not None:
        so.reasoning_token_ids = reasoning_cls.token_ids(tokenizer)
    return so
