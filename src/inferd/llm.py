"""Offline batch generation, shaped like vLLM's ``LLM`` so scripts port by changing the import."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from inferd.config import DEFAULT_MODEL, EngineArgs
from inferd.engine.llm_engine import LLMEngine
from inferd.outputs import RequestOutput
from inferd.sampling_params import RequestOutputKind, SamplingParams

PromptType = str | dict[str, Any]  # "text" | {"prompt": "text"} | {"prompt_token_ids": [...]}
Conversation = list[dict[str, Any]]


class LLM:
    """An engine for offline generation: ``LLM(model, **engine_args).generate(prompts, sampling_params)``.

    Engine arguments carry vLLM's names (``dtype``, ``max_model_len``, ``max_num_seqs``, ``block_size``,
    ``enable_prefix_caching``, ``gpu_memory_utilization``, ``seed``, ...): see :class:`inferd.config.EngineArgs`.
    """

    def __init__(self, model: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        engine_args = EngineArgs.from_kwargs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(engine_args)
        self._counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams().apply_defaults(self.llm_engine.input_processor.generation_defaults)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate completions for the prompts; outputs come back in the prompts' order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"Got {len(params_list)} sampling params for {len(prompts)} prompts; pass one, or one per prompt."
                )
        request_ids: list[str] = []
        try:
            for prompt, params in zip(prompts, params_list):
                text, token_ids = _split_prompt(prompt)
                request_id = str(next(self._counter))
                self.llm_engine.add_request(
                    request_id, text, params.clone(output_kind=RequestOutputKind.FINAL_ONLY), token_ids
                )
                request_ids.append(request_id)
        except Exception:
            self.llm_engine.abort_request(request_ids)
            raise
        return self._run_engine(request_ids, use_tqdm)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate."""
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError(
                "This model has no tokenizer, so it has no chat template; use generate() with token ids."
            )
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts: list[PromptType] = []
        for conversation in conversations:
            token_ids = tokenizer.apply_chat_template(
                conversation,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                tokenize=True,
                return_dict=False,
                **(chat_template_kwargs or {}),
            )
            prompts.append({"prompt_token_ids": list(token_ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _run_engine(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True, disable=not use_tqdm)
        num_output_tokens = 0
        try:
            while self.llm_engine.has_unfinished_requests():
                for output in self.llm_engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        num_output_tokens += sum(len(c.token_ids) for c in output.outputs)
                        bar.update(1)
                        elapsed = bar.format_dict.get("elapsed") or 0.0
                        if elapsed > 0:
                            bar.set_postfix_str(
                                f"output {num_output_tokens / elapsed:.1f} tok/s", refresh=False
                            )
        except BaseException:
            self.llm_engine.abort_request([r for r in request_ids if r not in finished])
            raise
        finally:
            bar.close()
        return [finished[r] for r in request_ids]


def _split_prompt(prompt: PromptType) -> tuple[str | None, list[int] | None]:
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"], None
    raise ValueError(
        "Each prompt must be a string, {'prompt': str} or {'prompt_token_ids': [int, ...]}; "
        f"got {type(prompt).__name__}."
    )
