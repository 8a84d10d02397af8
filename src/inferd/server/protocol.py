"""OpenAI request bodies (pydantic) and their translation into ``SamplingParams``.

Unknown fields are ignored, as OpenAI-compatible servers commonly do; fields inferd knows but does not implement
(functions, audio, ...) are refused with 400 naming the parameter by ``check_supported``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from inferd.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from inferd.server.errors import INVALID_TEXT_ERROR, APIError, bad_request, from_value_error, unsupported

# vLLM's older structured-output fields → StructuredOutputsParams fields.
_GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
_STRUCTURED_OPTIONS = frozenset({"disable_any_whitespace"})
_STRUCTURED_KEYS = frozenset({"json", "regex", "choice", "grammar", "json_object"}) | _STRUCTURED_OPTIONS


_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = 1 << 63


def _find_invalid_text(data: Any) -> str | None:
    """The path (``messages[0].content``) of the first string or key in ``data`` holding a lone UTF-16 surrogate
    (JSON allows ``"\\ud800"``; tokenizers and UTF-8 cannot take it); "" for the body itself, None when clean."""
    try:  # fast path, in C: almost every body is clean
        if not _SURROGATE.search(json.dumps(data, ensure_ascii=False, default=repr)):
            return None
    except (ValueError, RecursionError):
        pass
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return path
                stack.append((f"{path}.{key}" if path else str(key), item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value) if not isinstance(item, int))
    return None


class _Request(BaseModel):
    """Base of the request bodies: unknown fields are ignored; text must be valid Unicode (400 naming the field)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _reject_invalid_text(cls, data: Any) -> Any:
        path = _find_invalid_text(data)
        if path is not None:
            where = (path or "the request body")[:200].replace("{", "(").replace("}", ")")
            raise PydanticCustomError(
                INVALID_TEXT_ERROR,
                f"{where} contains an unpaired UTF-16 surrogate (such as \\ud800); send valid Unicode text.",
                {"param": path or None},
            )
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk


class _SamplingRequest(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI's, then vLLM's extras)."""

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = Field(default=None, ge=-_INT64, lt=_INT64)  # torch generators take 64-bit seeds
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra sampling parameters.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older guided_* names.
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="{'type': 'text' | 'json_object' | 'json_schema', 'json_schema': {'schema': ...}}",
    )
    structured_outputs: dict[str, Any] | None = Field(
        default=None,
        description="vLLM's: one of json, regex, choice, grammar, json_object, and/or disable_any_whitespace",
    )
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: Any = Field(default=None, exclude=True)

    def check_supported(self) -> None:
        """Raise a 400 ``APIError`` for a parameter inferd cannot honour yet."""
        if self.guided_whitespace_pattern is not None:
            raise unsupported("guided_whitespace_pattern", "xgrammar allows any JSON whitespace (or none)")
        if self.guided_decoding_backend not in (None, "auto", "xgrammar"):
            raise unsupported("guided_decoding_backend", "the only backend is 'xgrammar'")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")

    def structured_outputs_params(
        self, tool_schema: dict[str, Any] | None = None
    ) -> StructuredOutputsParams | None:
        """The request's output constraint, from whichever field carries it (``tool_schema``: the JSON schema a
        forced tool call needs); ``structured_outputs`` holding only options applies them to it. 400 naming the
        field when several constrain the output, or the constraint does not compile (this runs xgrammar: call it
        off the event loop)."""
        # (param, name of the constraint in messages, StructuredOutputsParams kwargs)
        found: list[tuple[str, str, dict[str, Any]]] = []
        if tool_schema is not None:
            found.append(("tools", "a function's parameters", {"json": tool_schema}))
        fmt = self.response_format
        kind = fmt.get("type", "text") if fmt is not None else "text"
        if kind == "json_object":
            found.append(("response_format", "response_format", {"json_object": True}))
        elif kind == "json_schema":
            spec = fmt.get("json_schema") if fmt is not None else None
            if not isinstance(spec, dict) or spec.get("schema") is None:
                raise bad_request(
                    "response_format of type 'json_schema' needs json_schema.schema (a JSON schema object).",
                    param="response_format",
                )
            found.append(("response_format", "response_format.json_schema.schema", {"json": spec["schema"]}))
        elif kind != "text":
            raise bad_request(
                f"response_format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}.",
                param="response_format",
            )
        for name, key in _GUIDED_FIELDS.items():
            if getattr(self, name) is not None:
                found.append((name, name, {key: getattr(self, name)}))
        so = self.structured_outputs
        options: dict[str, Any] = {}  # structured_outputs without a constraint: options for the one sent
        if so is not None:
            unknown = sorted(set(so) - _STRUCTURED_KEYS)
            if unknown:
                raise bad_request(
                    f"structured_outputs does not support {', '.join(unknown)}; use one of "
                    f"{', '.join(sorted(_STRUCTURED_KEYS))}.",
                    param="structured_outputs",
                )
            if set(so) <= _STRUCTURED_OPTIONS:
                options = dict(so)
            else:
                found.append(("structured_outputs", "structured_outputs", dict(so)))
        if not found:
            if options:
                raise bad_request(
                    f"structured_outputs.{next(iter(options))} needs an output constraint (json, regex, choice, "
                    "grammar, json_object, a response_format or a forced tool call).",
                    param="structured_outputs",
                )
            return None
        if len(found) > 1:
            raise bad_request(
                f"Send one output constraint; got {' and '.join(f[0] for f in found)}.", param=found[1][0]
            )
        param, label, kwargs = found[0]
        kwargs = {**kwargs, **options}
        try:
            return StructuredOutputsParams(**kwargs)
        except (ValueError, TypeError) as e:
            message = str(e)
            if label != "structured_outputs":  # name the field the user sent, not the internal one
                message = message.replace(f"structured_outputs.{next(iter(kwargs))}", label, 1)
            raise bad_request(message, param=param) from None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    def check_logit_bias(self, vocab_size: int | None) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        out: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            try:
                token_id = int(key)
            except ValueError:
                raise bad_request(
                    f"logit_bias keys must be token ids (integers as strings); got {key!r}.",
                    param="logit_bias",
                ) from None
            if token_id < 0 or (vocab_size is not None and token_id >= vocab_size):
                raise bad_request(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size}).",
                    param="logit_bias",
                )
            out[token_id] = value
        return out

    def build_sampling_params(
        self,
        *,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None,
        vocab_size: int | None,
        output_kind: RequestOutputKind,
        structured_outputs: StructuredOutputsParams | None = None,
    ) -> SamplingParams:
        """SamplingParams for this request; fields left unset keep the model's generation_config defaults."""
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "logprobs": logprobs,
            "prompt_logprobs": prompt_logprobs,
            "logit_bias": self.check_logit_bias(vocab_size),
            "structured_outputs": structured_outputs,
        }
        kwargs: dict[str, Any] = {k: v for k, v in optional.items() if v is not None}
        kwargs.update(
            n=self.n,
            max_tokens=max_tokens,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            output_kind=output_kind,
        )
        try:
            return SamplingParams(**kwargs)
        except ValueError as e:
            raise from_value_error(e, set(type(self).model_fields)) from None


class ChatMessage(BaseModel):
    """One message; extra fields (tool_calls, tool_call_id, reasoning_content, ...) reach the chat template."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = Field(
        default=None, description="Deprecated by OpenAI; use max_completion_tokens."
    )
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = Field(default=None, exclude=True)
    function_call: Any = Field(default=None, exclude=True)
    audio: Any = Field(default=None, exclude=True)
    # vLLM's chat extras.
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False

    def check_supported(self) -> None:
        super().check_supported()
        for name in ("functions", "function_call", "audio"):
            if getattr(self, name) is not None:
                raise unsupported(name)
        if not self.messages:
            raise bad_request("messages must contain at least one message.", param="messages")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs set to true.", param="top_logprobs")
        if self.add_generation_prompt and self.continue_final_message:
            raise bad_request(
                "continue_final_message=true needs add_generation_prompt=false.",
                param="continue_final_message",
            )

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    max_tokens: int | None = 16
    suffix: str | None = None
    best_of: int | None = None
    add_special_tokens: bool = True

    def check_supported(self) -> None:
        super().check_supported()
        if self.suffix is not None:
            raise unsupported("suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise unsupported("best_of", "only best_of equal to n is accepted")

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            items: list[str | list[int]] = [p]
        elif not p:
            raise bad_request("prompt must not be empty.", param="prompt")
        elif isinstance(p[0], int):
            items = [p]  # type: ignore[list-item]
        else:
            items = list(p)  # type: ignore[arg-type]
        for item in items:
            if len(item) == 0:
                raise bad_request("prompt must not be empty.", param="prompt")
        return items


class TokenizeRequest(_Request):
    """Either ``prompt`` (completion style) or ``messages`` (chat style, templated first)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for prompt, False for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise bad_request("Send exactly one of 'prompt' or 'messages'.", param="prompt")


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


def check_max_logprobs(value: int | None, limit: int, param: str) -> None:
    if value is not None and not 0 <= value <= limit:
        raise APIError(
            400,
            f"{param} must be between 0 and {limit} (the server's --max-logprobs); got {value}.",
            param=param,
        )
