"""Async engine frontend for the HTTP server: per-request output queues on the event loop, the engine core in
its own process. The event loop never waits on model work."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from inferd.config import EngineArgs, EngineConfig
from inferd.engine.core_client import EngineCoreClient, EngineDeadError
from inferd.engine.core_types import EngineCoreOutputs, SchedulerStats
from inferd.engine.dp_client import DPEngineCoreClient, start_engine_client
from inferd.engine.input_processor import InputProcessor
from inferd.engine.output_processor import OutputProcessor
from inferd.engine.stats import StatLoggerBase
from inferd.outputs import RequestOutput
from inferd.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError"]


class AsyncLLM:
    """Use :meth:`create`; then ``async for out in engine.generate(...)``."""

    def __init__(
        self,
        config: EngineConfig,
        input_processor: InputProcessor,
        client: EngineCoreClient | DPEngineCoreClient,
        stat_loggers: list[StatLoggerBase],
    ) -> None:
        self.config = config
        self.model_config = config.model_config
        self.input_processor = input_processor
        self.tokenizer = input_processor.tokenizer
        self.generation_defaults: dict[str, Any] = input_processor.generation_defaults
        self.output_processor = OutputProcessor(self.tokenizer)
        self.stat_loggers = stat_loggers
        self.scheduler_stats: SchedulerStats | None = None
        self._client = client
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop = asyncio.get_running_loop()
        self._dead_reason: str | None = None
        client.start_output_thread(self._on_outputs_threadsafe, self._on_dead_threadsafe)

    @classmethod
    async def create(
        cls,
        engine_args: EngineArgs,
        stat_loggers: list[StatLoggerBase] | None = None,
        client: EngineCoreClient | DPEngineCoreClient | None = None,
    ) -> AsyncLLM:
        """Resolve the config, load the tokenizer and start the engine-core process (one per data-parallel replica);
        returns once it is (they all are) ready. ``client``: engine processes already started by
        :func:`inferd.engine.dp_client.start_engine_client` for these arguments (the server starts them before it
        imports this module, so that the engine's own imports and model load begin at once).

        Raises ValueError for engine arguments or models it cannot serve, or too few GPUs for the replicas.
        """
        # The engine process starts at once and resolves the same arguments itself, so its imports and model
        # load overlap with this process's config and tokenizer work (a faster cold start).
        if client is None:
            client = await asyncio.to_thread(start_engine_client, engine_args)
        try:
            config = await asyncio.to_thread(engine_args.create_engine_config)
            input_processor = await asyncio.to_thread(InputProcessor, config.model_config)
            info = await asyncio.to_thread(client.wait_ready)
        except BaseException:
            client.shutdown()
            raise
        if isinstance(client, DPEngineCoreClient):
            logger.info(
                "Engine ready: %d data-parallel replicas, %s KV blocks",
                len(client.clients),
                " + ".join(str(i.get("num_blocks", 0)) for i in info["engines"]),
            )
        else:
            logger.info("Engine ready: %d KV blocks", info.get("num_blocks", 0))
        return cls(config, input_processor, client, list(stat_loggers or []))

    # ------------------------------------------------------------------ state
    @property
    def errored(self) -> bool:
        return self._dead_reason is not None or self._client.dead or not self._client.is_alive()

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._queues)

    # ------------------------------------------------------------------ requests
    async def generate(
        self,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        sampling_params: SamplingParams,
        request_id: str,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as ``sampling_params.output_kind`` says; leaving early aborts it.

        Raises ValueError (before the first output) for a request the engine can't serve, EngineDeadError if the
        engine has died.
        """
        if self.errored:
            raise EngineDeadError(self._dead_reason or "the engine is not running")
        if request_id in self._queues:
            raise ValueError(f"Request id {request_id!r} is already in use.")
        prompt, token_ids, params = self.input_processor.process(prompt, prompt_token_ids, sampling_params)
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        core_requests = self.output_processor.add_request(
            request_id, prompt, token_ids, params, self.input_processor.eos_token_id, time.time()
        )
        self._queues[request_id] = queue
        self._client.add_requests(core_requests)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self._abort_now(request_id)

    async def abort(self, request_id: str) -> None:
        self._abort_now(request_id)
        queue = self._queues.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(asyncio.CancelledError(f"request {request_id} aborted"))

    def _abort_now(self, request_id: str) -> None:
        child_ids = self.output_processor.abort_requests([request_id])
        self._client.abort_requests(child_ids)

    # ------------------------------------------------------------------ outputs (receiver thread → loop)
    def _on_outputs_threadsafe(self, outputs: EngineCoreOutputs) -> None:
        self._loop.call_soon_threadsafe(self._on_outputs, outputs)

    def _on_dead_threadsafe(self, reason: str) -> None:
        self._loop.call_soon_threadsafe(self._on_dead, reason)

    def _on_outputs(self, outputs: EngineCoreOutputs) -> None:
        processed = self.output_processor.process_outputs(outputs.outputs, time.time())
        for out in processed.request_outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
        for request_id, error in processed.failed.items():  # fails that request only; the others go on
            logger.error(
                "Processing the outputs of request %s failed; failing that request",
                request_id,
                exc_info=(type(error), error, error.__traceback__),
            )
            queue = self._queues.pop(request_id, None)
            if queue is not None:
                queue.put_nowait(
                    RuntimeError(f"Internal error while processing request {request_id}: {error!r}")
                )
        if processed.reqs_to_abort:
            self._client.abort_requests(processed.reqs_to_abort)
        if outputs.scheduler_stats is not None:
            self.scheduler_stats = outputs.scheduler_stats
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(outputs.scheduler_stats, processed.iteration_stats)
            except Exception:
                logger.exception("stat logger failed")

    def _on_dead(self, reason: str) -> None:
        self._dead_reason = reason
        error = EngineDeadError(
            f"The engine died: {reason.strip().splitlines()[-1] if reason else 'unknown'}"
        )
        for queue in self._queues.values():
            queue.put_nowait(error)

    async def shutdown(self) -> None:
        await asyncio.to_thread(self._client.shutdown)
