"""The engine core: schedule → run → update, one step at a time. Runs in-process (offline LLM) or in its own
process behind the async frontend (engine/core_proc.py)."""

from __future__ import annotations

import logging
import subprocess
import time

from inferd.config import EngineConfig
from inferd.engine.core_types import EngineCoreOutputs, EngineCoreRequest
from inferd.engine.request import Request
from inferd.engine.scheduler import Scheduler
from inferd.engine.scheduler_output import SchedulerOutput
from inferd.worker.executor import make_executor
from inferd.worker.kernel_warmup import finish as finish_kernel_warmup
from inferd.worker.model_runner import PendingRound

logger = logging.getLogger(__name__)


class EngineCore:
    """Owns the scheduler and the executor (the model runner of every tensor-parallel rank). Not thread-safe:
    one caller drives ``step()``; call ``shutdown()`` when done (it stops tensor-parallel workers)."""

    def __init__(
        self, config: EngineConfig, kernel_warmup: list[subprocess.Popen[bytes]] | None = None
    ) -> None:
        """``kernel_warmup``: the processes :func:`inferd.worker.kernel_warmup.start` started for this engine; they
        must have exited before the memory profile, which this waits for (the caller kills them if this raises)."""
        self.config = config
        self.executor = make_executor(config)
        try:
            self.runner = self.executor.driver  # rank 0: host-side queries only
            finish_kernel_warmup(kernel_warmup)
            num_blocks = self.executor.collective_rpc("determine_num_blocks")
            self._check_capacity(num_blocks)
            self.executor.collective_rpc("initialize_kv_cache", num_blocks)
            self.executor.collective_rpc("capture_cuda_graphs")
        except BaseException:
            self.executor.shutdown()
            raise
        self.scheduler = Scheduler(config.scheduler_config, config.cache_config, num_blocks)
        self.num_blocks = num_blocks
        self.num_scheduler_steps = config.scheduler_config.num_scheduler_steps
        self.async_scheduling = config.scheduler_config.async_scheduling
        # A decode round queued on the device but not yet updated: (its SchedulerOutput, steps, launched round).
        self._next_round: tuple[SchedulerOutput, int, PendingRound] | None = None

    def _check_capacity(self, num_blocks: int) -> None:
        bs = self.config.cache_config.block_size
        max_len = self.config.scheduler_config.max_model_len
        usable_tokens = (num_blocks - 1) * bs
        logger.info(
            "KV cache: %d blocks of %d tokens = %d tokens (%.2f GiB); max concurrency at max_model_len=%d: %.2fx",
            num_blocks,
            bs,
            usable_tokens,
            num_blocks * self.runner.kv_block_bytes() / 2**30,
            max_len,
            usable_tokens / max_len,
        )
        if usable_tokens < max_len:
            raise ValueError(
                f"The KV cache holds {usable_tokens} tokens, fewer than max_model_len={max_len}, so a long request "
                "could never run. Lower --max-model-len, or give the cache more memory "
                "(--gpu-memory-utilization / --kv-cache-memory-bytes / --num-gpu-blocks-override)."
            )

    def add_request(self, request: EngineCoreRequest) -> None:
        self.scheduler.add_request(
            Request(
                request.req_id,
                request.prompt_token_ids,
                request.sampling_params,
                request.eos_token_id,
                self.config.scheduler_config.max_model_len,
                arrival_time=request.arrival_time,
            )
        )

    def abort_requests(self, req_ids: list[str]) -> None:
        self.scheduler.abort_requests(req_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> EngineCoreOutputs:
        """Schedule, run and update one step (or one multi-step decode round).

        With asynchronous scheduling, a multi-step round's successor is scheduled and queued on the device
        before the round's tokens are waited for (Scheduler.schedule_continuation): the host's work between rounds
        (this update, output processing, the next schedule) then overlaps the device's. The queued round is what
        the next call updates."""
        if self._next_round is not None:
            scheduler_output, num_steps, launched = self._next_round
            self._next_round = None
        else:
            scheduler_output = self.scheduler.schedule()
            num_steps = 1
            if (
                self.num_scheduler_steps > 1
                and not scheduler_output.scheduled_new_reqs
                and self.runner.can_run_multistep(scheduler_output.num_scheduled_tokens)
            ):
                num_steps = self.scheduler.add_decode_lookahead(scheduler_output, self.num_scheduler_steps)
            launched = self.executor.launch_model(scheduler_output, num_steps)
        if self.async_scheduling and num_steps > 1:
            following = self.scheduler.schedule_continuation(
                scheduler_output, num_steps, self.num_scheduler_steps
            )
            if following is not None:
                so, n = following
                self._next_round = (so, n, self.executor.launch_model(so, n, continues=launched))
        outputs = self.scheduler.update_from_output(scheduler_output, launched.result())
        if self._next_round is not None and not self.scheduler.has_unfinished_requests():
            # Every request of the queued round stopped on a token of this one: wait for it now (it produces
            # nothing) rather than leave it to the next request's first step.
            so, _, queued = self._next_round
            self._next_round = None
            self.scheduler.update_from_output(so, queued.result())
        outputs.timestamp = time.time()
        return outputs

    def shutdown(self) -> None:
        self.executor.shutdown()
