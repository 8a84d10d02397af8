"""POST /tokenize and POST /detokenize (vLLM's shapes), with the same model and template as generation."""

from __future__ import annotations

from typing import Any

from inferd.server.chat_template import render_chat, to_template_messages
from inferd.server.errors import bad_request
from inferd.server.protocol import DetokenizeRequest, TokenizeRequest
from inferd.server.serving_engine import OpenAIServing


class OpenAIServingTokenization(OpenAIServing):
    async def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        """``{"count", "max_model_len", "tokens", "token_strs"}`` for a prompt or for templated messages."""
        req.check()
        engine, _ = self.engine_for(req.model)
        tokenizer = engine.tokenizer
        if tokenizer is None:
            raise bad_request("This model has no tokenizer.", param="prompt")
        messages = to_template_messages(req.messages) if req.messages is not None else None

        def work() -> tuple[list[int], list[str] | None]:
            if messages is not None:
                text = render_chat(
                    tokenizer,
                    messages,
                    chat_template=self.state.args.chat_template,
                    add_generation_prompt=req.add_generation_prompt,
                    continue_final_message=req.continue_final_message,
                    template_kwargs=req.chat_template_kwargs,
                )
                add_special = bool(req.add_special_tokens)
            else:
                text = req.prompt or ""
                add_special = req.add_special_tokens is not False
            ids = list(tokenizer.encode(text, add_special_tokens=add_special))
            strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
            return ids, strs

        ids, strs = await self.state.run_tokenizer(work)
        return {
            "count": len(ids),
            "max_model_len": engine.model_config.max_model_len,
            "tokens": ids,
            "token_strs": strs,
        }

    async def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        """``{"prompt": text}`` for token ids; 400 for ids outside the vocabulary."""
        engine, _ = self.engine_for(req.model)
        tokenizer = engine.tokenizer
        if tokenizer is None:
            raise bad_request("This model has no tokenizer.", param="tokens")
        vocab = max(len(tokenizer), self.vocab_size(engine) or 0)
        bad = next((t for t in req.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is outside the vocabulary [0, {vocab}).", param="tokens")

        def work() -> str:
            try:
                return tokenizer.decode(req.tokens)
            except Exception as e:  # e.g. padded vocabulary ids the tokenizer does not know
                raise bad_request(f"Could not decode these tokens: {e}", param="tokens") from None

        return {"prompt": await self.state.run_tokenizer(work)}
