"""Synchronous engine for offline use: input processing, the engine core in-process, output processing."""

from __future__ import annotations

import time

from inferd.config import EngineArgs, EngineConfig
from inferd.engine.engine_core import EngineCore
from inferd.engine.input_processor import InputProcessor
from inferd.engine.output_processor import OutputProcessor
from inferd.outputs import RequestOutput
from inferd.sampling_params import SamplingParams


class LLMEngine:
    """Drives an in-process EngineCore. ``step()`` returns the RequestOutputs produced by one engine step."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = config.model_config
        self.input_processor = InputProcessor(config.model_config)
        self.tokenizer = self.input_processor.tokenizer
        self.output_processor = OutputProcessor(self.tokenizer)
        self.engine_core = EngineCore(config)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        return cls(engine_args.create_engine_config())

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        params: SamplingParams,
        prompt_token_ids: list[int] | None = None,
        arrival_time: float | None = None,
    ) -> None:
        prompt, prompt_token_ids, params = self.input_processor.process(prompt, prompt_token_ids, params)
        core_requests = self.output_processor.add_request(
            request_id,
            prompt,
            prompt_token_ids,
            params,
            self.input_processor.eos_token_id,
            time.time() if arrival_time is None else arrival_time,
        )
        for core_request in core_requests:
            self.engine_core.add_request(core_request)

    def abort_request(self, request_ids: list[str]) -> None:
        child_ids = self.output_processor.abort_requests(request_ids)
        self.engine_core.abort_requests(child_ids)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        core_outputs = self.engine_core.step()
        processed = self.output_processor.process_outputs(core_outputs.outputs, time.time())
        if processed.reqs_to_abort:
            self.engine_core.abort_requests(processed.reqs_to_abort)
        if processed.failed:  # offline there is no one else to tell: surface the error to the caller
            request_id, error = next(iter(processed.failed.items()))
            raise RuntimeError(f"Processing the outputs of request {request_id} failed: {error!r}") from error
        return processed.request_outputs
