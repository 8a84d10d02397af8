"""Frontend input handling shared by the offline and async engines: tokenizer, generation-config defaults,
EOS ids, and validation of each request against the model's limits."""

from __future__ import annotations

from typing import Any

from inferd.config import ModelConfig
from inferd.models.source import eos_token_ids, load_generation_defaults, load_tokenizer
from inferd.sampling_params import SamplingParams


class InputProcessor:
    """Turns (prompt, prompt_token_ids, SamplingParams) into validated engine inputs.

    Raises ``ValueError`` with a message naming the problem for anything the engine could not serve.
    """

    def __init__(self, model_config: ModelConfig) -> None:
        self.model_config = model_config
        source = model_config.source
        self.tokenizer = load_tokenizer(source)
        self.generation_defaults: dict[str, Any] = load_generation_defaults(
            source, model_config.generation_config
        )
        self.eos_token_id, extra_eos = eos_token_ids(source, self.tokenizer)
        self.extra_eos_token_ids = [t for t in extra_eos if t != self.eos_token_id]
        self.vocab_size: int = model_config.hf_config.vocab_size

    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("This model has no tokenizer; send prompt_token_ids instead of text.")
        return list(self.tokenizer.encode(prompt, add_special_tokens=True))

    def process(
        self, prompt: str | None, prompt_token_ids: list[int] | None, params: SamplingParams
    ) -> tuple[str | None, list[int], SamplingParams]:
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("Either a prompt or prompt_token_ids is needed.")
            prompt_token_ids = self.tokenize(prompt)
        prompt_token_ids = list(prompt_token_ids)
        max_len = self.model_config.max_model_len
        if not prompt_token_ids:
            raise ValueError("The prompt is empty; send at least one token.")
        if len(prompt_token_ids) >= max_len:
            raise ValueError(
                f"The prompt has {len(prompt_token_ids)} tokens, but max_model_len is {max_len}: it must leave room "
                "for at least one generated token. Shorten the prompt or raise --max-model-len."
            )
        bad = next(
            (t for t in prompt_token_ids if not isinstance(t, int) or not 0 <= t < self.vocab_size), None
        )
        if bad is not None:
            raise ValueError(
                f"Token id {bad} in the prompt is outside the vocabulary [0, {self.vocab_size})."
            )
        max_logprobs = self.model_config.max_logprobs
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > max_logprobs:
                raise ValueError(
                    f"{name}={value} is more than the server allows (--max-logprobs {max_logprobs})."
                )
        if params.logit_bias:
            bad = next((t for t in params.logit_bias if t >= self.vocab_size), None)
            if bad is not None:
                raise ValueError(
                    f"logit_bias token id {bad} is outside the vocabulary [0, {self.vocab_size})."
                )
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this model has none. Use stop_token_ids.")
        if params.detokenize and self.tokenizer is None:
            params = params.clone(detokenize=False)
        params = params.apply_defaults(self.generation_defaults)
        if self.extra_eos_token_ids and not params.ignore_eos:
            extra = [t for t in self.extra_eos_token_ids if t not in params.stop_token_ids]
            if extra:
                params = params.clone(stop_token_ids=[*params.stop_token_ids, *extra])
        return prompt, prompt_token_ids, params
