"""POST /v1/chat/completions: messages → chat template → engine → OpenAI chat completion (JSON or SSE chunks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from inferd.outputs import RequestOutput
from inferd.sampling_params import RequestOutputKind, StructuredOutputsParams
from inferd.server.chat_outputs import ChatOutputParser, ToolPlan, plan_tools, structured_outputs_for
from inferd.server.chat_template import render_chat, to_template_messages
from inferd.server.errors import APIError
from inferd.server.logprobs import chat_logprobs
from inferd.server.protocol import ChatCompletionRequest, check_max_logprobs
from inferd.server.serving_engine import OpenAIServing
from inferd.server.streaming import SSE_DONE, SSEResponse, cancel_on_disconnect, sse_event


class OpenAIServingChat(OpenAIServing):
    async def create_chat_completion(self, req: ChatCompletionRequest, raw_request: Request) -> Response:
        """The response for one chat request; raises ``APIError`` for anything the client must change."""
        req.check_supported()
        engine, model_name = self.engine_for(req.model)
        check_max_logprobs(req.top_logprobs, engine.model_config.max_logprobs, "top_logprobs")
        plan = plan_tools(req, self.state.args)
        messages = to_template_messages(req.messages)
        tokenizer = engine.tokenizer
        prompt, prompt_ids, structured = await self.state.run_tokenizer(
            self._render_and_encode, tokenizer, messages, req, plan
        )
        self.check_prompt(engine, prompt_ids, "messages")
        top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = req.build_sampling_params(
            max_tokens=req.requested_max_tokens,
            logprobs=top_logprobs,
            prompt_logprobs=None,
            vocab_size=self.vocab_size(engine),
            output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY,
            structured_outputs=structured,
        )
        request_id = self.new_id("chatcmpl")
        outputs = self.state.generate(prompt, prompt_ids, params, request_id)
        parsers = [ChatOutputParser(plan, self.state.args, prompt) for _ in range(req.n)]
        if req.stream:
            return SSEResponse(
                self._stream(outputs, req, request_id, model_name, len(prompt_ids), tokenizer, parsers)
            )
        result = await cancel_on_disconnect(raw_request, _last(outputs))
        if isinstance(result, Response):
            return result
        return JSONResponse(self._response(result, req, request_id, model_name, tokenizer, parsers))

    def _render_and_encode(
        self, tokenizer: Any, messages: list[dict[str, Any]], req: ChatCompletionRequest, plan: ToolPlan
    ) -> tuple[str, list[int], StructuredOutputsParams | None]:
        structured = structured_outputs_for(req, plan, self.state.args, tokenizer)
        text = render_chat(
            tokenizer,
            messages,
            chat_template=self.state.args.chat_template,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            template_kwargs=req.chat_template_kwargs,
            tools=plan.tools,
        )
        return text, list(tokenizer.encode(text, add_special_tokens=req.add_special_tokens)), structured

    def _response(
        self,
        final: RequestOutput | None,
        req: ChatCompletionRequest,
        request_id: str,
        model_name: str,
        tokenizer: Any,
        parsers: list[ChatOutputParser],
    ) -> dict[str, Any]:
        if final is None:
            raise APIError(503, "The request was aborted before it produced output.")
        choices = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            logprobs = None
            if req.logprobs and c.logprobs is not None:
                logprobs = {
                    "content": chat_logprobs(c.token_ids, c.logprobs, req.top_logprobs or 0, tokenizer)
                }
            parser = parsers[c.index]
            choices.append(
                {
                    "index": c.index,
                    "message": parser.message(c.text),
                    "logprobs": logprobs,
                    "finish_reason": parser.finish_reason(c.finish_reason, parser.called),
                    "stop_reason": c.stop_reason,
                }
            )
        completion_tokens = sum(len(c.token_ids) for c in final.outputs)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": self.now(),
            "model": model_name,
            "choices": choices,
            "usage": self.usage(len(final.prompt_token_ids), completion_tokens),
        }

    async def _stream(
        self,
        outputs: AsyncIterator[RequestOutput],
        req: ChatCompletionRequest,
        request_id: str,
        model_name: str,
        prompt_tokens: int,
        tokenizer: Any,
        parsers: list[ChatOutputParser],
    ) -> AsyncIterator[bytes]:
        base = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": self.now(),
            "model": model_name,
        }
        include_usage, continuous = req.include_usage, req.continuous_usage
        completion_tokens = 0

        def chunk(choice: dict[str, Any]) -> bytes:
            payload: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                payload["usage"] = self.usage(prompt_tokens, completion_tokens) if continuous else None
            return sse_event(payload)

        for i in range(req.n):  # OpenAI's first delta of each choice: the role, no content yet
            yield chunk(
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            )
        async for out in outputs:
            for c in out.outputs:
                completion_tokens += len(c.token_ids)
                want_logprobs = req.logprobs and c.logprobs
                parser = parsers[c.index]
                delta = parser.delta(c.text, final=c.finish_reason is not None)
                if not delta and c.finish_reason is None and not want_logprobs:
                    continue
                logprobs = None
                if want_logprobs:
                    assert c.logprobs is not None
                    logprobs = {
                        "content": chat_logprobs(c.token_ids, c.logprobs, req.top_logprobs or 0, tokenizer)
                    }
                choice: dict[str, Any] = {
                    "index": c.index,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": parser.finish_reason(c.finish_reason, parser.called),
                }
                if c.finish_reason is not None:
                    choice["stop_reason"] = c.stop_reason
                yield chunk(choice)
        if include_usage:
            yield sse_event({**base, "choices": [], "usage": self.usage(prompt_tokens, completion_tokens)})
        yield SSE_DONE


async def _last(outputs: AsyncIterator[RequestOutput]) -> RequestOutput | None:
    """The final output of a FINAL_ONLY request."""
    last = None
    async for out in outputs:
        last = out
    return last
