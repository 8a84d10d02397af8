"""Synchronous engine for offline use: input processing, the engine core in-process (or one engine-core process
per data-parallel replica), output processing."""

from __future__ import annotations

import time

from inferd.config import EngineArgs, EngineConfig, ParallelConfig
from inferd.engine.dp_client import DPEngineCoreClient, SyncDPClient
from inferd.engine.engine_core import EngineCore
from inferd.engine.input_processor import InputProcessor
from inferd.engine.output_processor import OutputProcessor
from inferd.outputs import RequestOutput
from inferd.sampling_params import SamplingParams


class LLMEngine:
    """Drives an in-process EngineCore, or with ``data_parallel_size > 1`` one engine-core process per replica
    (also with tensor parallelism, so that a dead worker process raises EngineDeadError here instead of ending
    the caller's process).

    ``step()`` returns the RequestOutputs produced by one engine step (with replicas: by whatever they sent since
    the last call, waiting for at least one). ``shutdown()`` stops the engine's processes; with replicas that also
    happens when the engine is garbage-collected or at interpreter exit.
    """

    def __init__(self, config: EngineConfig, dp_client: DPEngineCoreClient | None = None) -> None:
        self.config = config
        self.model_config = config.model_config
        self.engine_core: EngineCore | SyncDPClient
        if _needs_processes(config.parallel_config) or dp_client is not None:
            client = dp_client if dp_client is not None else DPEngineCoreClient.start(config)
            try:
                self.input_processor = InputProcessor(config.model_config)
                client.wait_ready()
            except BaseException:
                client.shutdown()
                raise
            self.engine_core = SyncDPClient(client)
        else:
            self.input_processor = InputProcessor(config.model_config)
            self.engine_core = EngineCore(config)
        self.tokenizer = self.input_processor.tokenizer
        self.output_processor = OutputProcessor(self.tokenizer)

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        if engine_args.data_parallel_size == 1 and engine_args.tensor_parallel_size == 1:
            return cls(engine_args.create_engine_config())
        # The replicas start at once and resolve the arguments themselves, in parallel with this process.
        client = DPEngineCoreClient.start(engine_args)
        try:
            config = engine_args.create_engine_config()
        except BaseException:
            client.shutdown()
            raise
        return cls(config, client)

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
        if isinstance(self.engine_core, SyncDPClient):
            self.engine_core.add_requests(core_requests)  # n children stay on one replica
        else:
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

    def shutdown(self) -> None:
        """Stop the engine core's processes (tensor-parallel workers, data-parallel replicas); idempotent."""
        self.engine_core.shutdown()


def _needs_processes(parallel_config: ParallelConfig) -> bool:
    return parallel_config.data_parallel_size > 1 or parallel_config.tensor_parallel_size > 1
