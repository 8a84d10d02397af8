"""OpenAI request bodies (pydantic) and their translation into ``SamplingParams``.

Unknown fields are ignored, as OpenAI-compatible servers commonly do; fields inferd knows but does not implement
(tools, structured outputs, ...) are refused with 400 naming the parameter by ``check_supported``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inferd.sampling_params import RequestOutputKind, SamplingParams
from inferd.server.errors import APIError, bad_request, from_value_error, unsupported

# Structured-output fields of vLLM and OpenAI; refused until constrained decoding lands.
_STRUCTURED_FIELDS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "structured_outputs",
)


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage in every chunk


class _SamplingRequest(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI's, then vLLM's extras)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
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
    # Known but unsupported: declared so they can be refused by name instead of ignored.
    response_format: dict[str, Any] | None = Field(
        default=None, description="Only {'type': 'text'} is supported."
    )
    guided_json: Any = Field(default=None, exclude=True)
    guided_regex: Any = Field(default=None, exclude=True)
    guided_choice: Any = Field(default=None, exclude=True)
    guided_grammar: Any = Field(default=None, exclude=True)
    guided_decoding_backend: Any = Field(default=None, exclude=True)
    guided_whitespace_pattern: Any = Field(default=None, exclude=True)
    structured_outputs: Any = Field(default=None, exclude=True)

    def check_supported(self) -> None:
        """Raise a 400 ``APIError`` for a parameter inferd cannot honour yet."""
        for name in _STRUCTURED_FIELDS:
            if getattr(self, name) is not None:
                raise unsupported(name, "structured outputs are not implemented")
        fmt = self.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            raise unsupported("response_format", "only {'type': 'text'} is accepted")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")

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
        if self.tool_choice not in (None, "none", "auto"):
            raise unsupported("tool_choice", "only 'none' is accepted until tool calling lands")
        if self.tools and self.tool_choice != "none":
            raise unsupported("tools", "tool calling is not implemented; send tool_choice='none' or no tools")
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


class TokenizeRequest(BaseModel):
    """Either ``prompt`` (completion style) or ``messages`` (chat style, templated first)."""

    model_config = ConfigDict(extra="ignore")

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


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


def check_max_logprobs(value: int | None, limit: int, param: str) -> None:
    if value is not None and not 0 <= value <= limit:
        raise APIError(
            400,
            f"{param} must be between 0 and {limit} (the server's --max-logprobs); got {value}.",
            param=param,
        )
