"""What the chat, completion and tokenize handlers share: model-name checks, prompt checks, usage, token text."""

from __future__ import annotations

import time
import uuid

from inferd.server.errors import APIError, bad_request
from inferd.server.state import EngineClient, ServerState


class OpenAIServing:
    """Base of the endpoint handlers; each request first calls :meth:`engine_for` (503 / 404 checks)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def engine_for(self, requested_model: str | None) -> tuple[EngineClient, str]:
        """The engine and the served name to report; 503 when not ready, 404 for a model not served here."""
        engine = self.state.require_engine()
        names = tuple(engine.model_config.served_model_names)
        if not requested_model:
            return engine, names[0]
        if requested_model not in names:
            raise APIError(
                404,
                f"The model '{requested_model}' does not exist on this server; served: {', '.join(names)}.",
                param="model",
                code="model_not_found",
            )
        return engine, requested_model

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    @staticmethod
    def now() -> int:
        return int(time.time())

    @staticmethod
    def vocab_size(engine: EngineClient) -> int | None:
        size = getattr(engine.model_config.hf_config, "vocab_size", None)
        return size if isinstance(size, int) and size > 0 else None

    def check_prompt(self, engine: EngineClient, token_ids: list[int], param: str) -> None:
        """400 for an empty prompt, a token id outside the vocabulary, or a prompt that leaves no room to generate."""
        if not token_ids:
            raise bad_request(
                f"The prompt is empty after tokenization; send at least one token in '{param}'.", param
            )
        vocab = self.vocab_size(engine)
        if vocab is not None:
            bad = next((t for t in token_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise bad_request(
                    f"Token id {bad} in '{param}' is outside the vocabulary [0, {vocab}).", param
                )
        max_len = engine.model_config.max_model_len
        if len(token_ids) >= max_len:
            raise bad_request(
                f"This model's maximum context length is {max_len} tokens, but the prompt has {len(token_ids)} "
                f"tokens (at least one must be left to generate); shorten '{param}'.",
                param=param,
                code="context_length_exceeded",
            )

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
