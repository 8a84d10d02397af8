"""POST /v1/completions: prompt(s) as text or token ids → engine → OpenAI text completion (JSON or SSE chunks).

A batch of prompts runs as one engine request each; choice ``index`` is ``prompt_index * n + completion_index``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from inferd.outputs import CompletionOutput, RequestOutput
from inferd.sampling_params import RequestOutputKind, SamplingParams
from inferd.server.errors import APIError, bad_request
from inferd.server.logprobs import CompletionLogprobs
from inferd.server.protocol import CompletionRequest, check_max_logprobs
from inferd.server.serving_engine import OpenAIServing
from inferd.server.streaming import (
    SSE_DONE,
    SSEResponse,
    cancel_on_disconnect,
    merge_async_iterators,
    sse_event,
)

Prompt = tuple[str | None, list[int], str]  # (text given, token ids, text to echo)


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, req: CompletionRequest, raw_request: Request) -> Response:
        """The response for one completion request; raises ``APIError`` for anything the client must change."""
        req.check_supported()
        engine, model_name = self.engine_for(req.model)
        check_max_logprobs(req.logprobs, engine.model_config.max_logprobs, "logprobs")
        tokenizer = engine.tokenizer
        prompts: list[Prompt] = await self.state.run_tokenizer(
            _encode_prompts, tokenizer, req.prompts(), req.add_special_tokens, req.echo
        )
        for _, ids, _ in prompts:
            self.check_prompt(engine, ids, "prompt")
        self.state.admission.check_request(req.n, len(prompts))
        structured = await self.state.run_tokenizer(req.structured_outputs_params)  # xgrammar: off the loop
        if structured is not None and tokenizer is None:
            raise bad_request(
                "Structured outputs need a tokenizer; this model has none.", param="response_format"
            )
        params = req.build_sampling_params(
            max_tokens=req.max_tokens,
            logprobs=req.logprobs,
            prompt_logprobs=req.logprobs if req.echo and req.logprobs is not None else None,
            vocab_size=self.vocab_size(engine),
            output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY,
            structured_outputs=structured,
        )
        request_id = self.new_id("cmpl")
        streams = [
            self.state.generate(text, ids, params, request_id if len(prompts) == 1 else f"{request_id}-{i}")
            for i, (text, ids, _) in enumerate(prompts)
        ]
        view = _CompletionView(req, params, prompts, tokenizer)
        merged = merge_async_iterators(streams)
        if req.stream:
            return SSEResponse(self._stream(merged, view, request_id, model_name))
        result = await cancel_on_disconnect(raw_request, _collect(merged, len(prompts)))
        if isinstance(result, Response):
            return result
        choices = []
        completion_tokens = 0
        for prompt_index, final in enumerate(result):
            if final is None:
                raise APIError(503, "The request was aborted before it produced output.")
            for c in sorted(final.outputs, key=lambda c: c.index):
                completion_tokens += len(c.token_ids)
                choices.append(view.choice(prompt_index, c, final))
        body = {
            "id": request_id,
            "object": "text_completion",
            "created": self.now(),
            "model": model_name,
            "choices": choices,
            "usage": self.usage(sum(len(ids) for _, ids, _ in prompts), completion_tokens),
        }
        return JSONResponse(body)

    async def _stream(
        self,
        merged: AsyncIterator[tuple[int, RequestOutput]],
        view: _CompletionView,
        request_id: str,
        model_name: str,
    ) -> AsyncIterator[bytes]:
        base = {"id": request_id, "object": "text_completion", "created": self.now(), "model": model_name}
        req = view.req
        prompt_tokens = sum(len(ids) for _, ids, _ in view.prompts)
        completion_tokens = 0
        async for prompt_index, out in merged:
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                first = view.is_first(prompt_index, c.index)
                if (
                    not first
                    and not c.text
                    and c.finish_reason is None
                    and not (req.logprobs is not None and c.logprobs)
                ):
                    continue
                payload: dict[str, Any] = {**base, "choices": [view.choice(prompt_index, c, out)]}
                if req.include_usage:
                    payload["usage"] = (
                        self.usage(prompt_tokens, completion_tokens) if req.continuous_usage else None
                    )
                yield sse_event(payload)
        if req.include_usage:
            yield sse_event({**base, "choices": [], "usage": self.usage(prompt_tokens, completion_tokens)})
        yield SSE_DONE


class _CompletionView:
    """Turns CompletionOutputs (whole or deltas) into choice dicts, echoing the prompt in each choice's first one."""

    def __init__(self, req: CompletionRequest, params: SamplingParams, prompts: list[Prompt], tokenizer: Any):
        self.req = req
        self.n = params.n
        self.prompts = prompts
        self.tokenizer = tokenizer
        self._started: set[int] = set()
        self._logprobs: dict[int, CompletionLogprobs] = {}
        self._prompt_logprobs: dict[int, Any] = {}

    def is_first(self, prompt_index: int, completion_index: int) -> bool:
        return prompt_index * self.n + completion_index not in self._started

    def choice(self, prompt_index: int, c: CompletionOutput, out: RequestOutput) -> dict[str, Any]:
        index = prompt_index * self.n + c.index
        first = index not in self._started
        self._started.add(index)
        if out.prompt_logprobs is not None:
            self._prompt_logprobs.setdefault(prompt_index, out.prompt_logprobs)
        _, prompt_ids, echo_text = self.prompts[prompt_index]
        text = c.text
        logprobs = None
        if self.req.logprobs is not None:
            builder = self._logprobs.setdefault(index, CompletionLogprobs(self.req.logprobs, self.tokenizer))
            parts = []
            if self.req.echo and first:
                parts.append(builder.build(prompt_ids, self._prompt_logprobs.get(prompt_index)))
            parts.append(builder.build(c.token_ids, c.logprobs))
            logprobs = {k: [v for part in parts for v in part[k]] for k in parts[0]}
        if self.req.echo and first:
            text = echo_text + text
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
        }


def _encode_prompts(
    tokenizer: Any, prompts: list[str | list[int]], add_special_tokens: bool, echo: bool
) -> list[Prompt]:
    out: list[Prompt] = []
    for p in prompts:
        if isinstance(p, str):
            if tokenizer is None:
                raise bad_request(
                    "This model has no tokenizer; send the prompt as token ids.", param="prompt"
                )
            out.append((p, list(tokenizer.encode(p, add_special_tokens=add_special_tokens)), p))
        else:
            echo_text = ""
            if echo and tokenizer is not None:
                try:
                    echo_text = tokenizer.decode(p)
                except Exception:  # ids outside the vocabulary are reported by check_prompt
                    echo_text = ""
            out.append((None, list(p), echo_text))
    return out


async def _collect(
    merged: AsyncIterator[tuple[int, RequestOutput]], num_prompts: int
) -> list[RequestOutput | None]:
    finals: list[RequestOutput | None] = [None] * num_prompts
    async for prompt_index, out in merged:
        finals[prompt_index] = out
    return finals
