"""The scheduler: which requests run each step and how many tokens each computes (pure Python, no torch).

One rule, as vLLM v1: every step each scheduled request's ``num_computed_tokens`` catches up toward its
``num_tokens`` under a token budget. A prompt longer than the budget is computed in chunks (chunked prefill),
prefix-cache hits advance ``num_computed_tokens`` at once, and a preempted request goes back to 0 and recomputes
its prompt and outputs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from inferd.config import CacheConfig, SchedulerConfig
from inferd.engine.core_types import EngineCoreOutput, EngineCoreOutputs, SchedulerStats
from inferd.engine.kv_cache_manager import KVCacheManager
from inferd.engine.request import Request, RequestStatus
from inferd.engine.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from inferd.worker.model_runner_output import ModelRunnerOutput


class Scheduler:
    """FCFS scheduler with chunked prefill, prefix caching and recompute preemption.

    Guarantees: running requests are served before waiting ones; a waiting request never jumps ahead of an earlier
    one; a request scheduled in a step is never preempted in that step; every added request ends exactly once as
    finished (reported in an output) or aborted (not reported), and then holds no KV block.
    """

    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int) -> None:
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.max_model_len = scheduler_config.max_model_len
        self.max_num_seqs = scheduler_config.max_num_seqs
        self.max_num_batched_tokens = scheduler_config.max_num_batched_tokens
        self.kv_cache_manager = KVCacheManager(
            num_blocks=num_blocks,
            block_size=cache_config.block_size,
            enable_prefix_caching=cache_config.enable_prefix_caching,
        )
        self.block_size = cache_config.block_size
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()  # finished or aborted since the last schedule()
        self.num_preemptions = 0  # cumulative

    # ------------------------------------------------------------------ requests in and out
    def add_request(self, request: Request) -> None:
        """Queue a request (FCFS). Raises ``ValueError`` when it can never be scheduled.

        ``request.max_tokens`` is lowered where needed so the whole sequence fits in the KV cache on its own (it
        then ends with finish reason "length"), so a lone request can always make progress.
        """
        n = request.num_prompt_tokens
        if n == 0:
            raise ValueError(f"Request {request.req_id}: the prompt is empty; send at least one token.")
        if request.req_id in self.requests:
            raise ValueError(f"Request id {request.req_id!r} is already in use; use a unique request id.")
        if n >= self.max_model_len:
            raise ValueError(
                f"Request {request.req_id}: the prompt has {n} tokens but max_model_len is {self.max_model_len}, "
                "which leaves no room for an output token; shorten the prompt or raise --max-model-len."
            )
        kv = self.kv_cache_manager
        capacity = kv.num_usable_blocks * self.block_size
        if n > capacity:
            raise ValueError(
                f"Request {request.req_id}: the prompt has {n} tokens but the KV cache holds only {capacity} "
                f"({kv.num_usable_blocks} blocks of {self.block_size}); shorten the prompt or give the KV cache "
                "more memory (--gpu-memory-utilization, --kv-cache-memory-bytes)."
            )
        if not self.scheduler_config.enable_chunked_prefill and n > self.max_num_batched_tokens:
            raise ValueError(
                f"Request {request.req_id}: the prompt has {n} tokens, more than max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) with chunked prefill disabled; raise --max-num-batched-tokens "
                "or enable chunked prefill."
            )
        # A sequence of L tokens needs KV for L - 1 of them; cap the length so it can run alone in the cache.
        request.max_tokens = min(request.max_tokens, capacity + 1 - n)
        request.status = RequestStatus.WAITING
        self.requests[request.req_id] = request
        self.waiting.append(request)

    def finish_requests(self, req_ids: str | Iterable[str], finished_status: RequestStatus) -> None:
        """End requests in any state with ``finished_status`` and free their blocks; emits no output.

        Unknown or already finished ids are ignored.
        """
        if not finished_status.is_finished():
            raise ValueError(f"finished_status must be a finished status; got {finished_status.name}.")
        if isinstance(req_ids, str):
            req_ids = (req_ids,)
        ended: list[Request] = []
        for req_id in req_ids:
            request = self.requests.pop(req_id, None)
            if request is None:
                continue
            ended.append(request)
        if not ended:
            return
        ended_ids = {r.req_id for r in ended}
        self.running = [r for r in self.running if r.req_id not in ended_ids]
        if any(r.req_id in ended_ids for r in self.waiting):
            self.waiting = deque(r for r in self.waiting if r.req_id not in ended_ids)
        for request in ended:
            request.status = finished_status
            self.kv_cache_manager.free(request)
        self.finished_req_ids |= ended_ids

    def abort_requests(self, req_ids: str | Iterable[str]) -> None:
        """Abort requests in any state (status FINISHED_ABORTED, blocks freed, no output). Unknown ids are ignored."""
        self.finish_requests(req_ids, RequestStatus.FINISHED_ABORTED)

    def get_request(self, req_id: str) -> Request | None:
        """The unfinished request with this id, else None."""
        return self.requests.get(req_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    def make_stats(self) -> SchedulerStats:
        kv = self.kv_cache_manager
        return SchedulerStats(
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=kv.usage,
            prefix_cache_queries=kv.prefix_cache_queries,
            prefix_cache_hits=kv.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
        )

    # ------------------------------------------------------------------ one step
    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts; running requests first, then waiting ones in FCFS order."""
        kv = self.kv_cache_manager
        budget = self.max_num_batched_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: list[NewRequestData] = []
        cached_reqs: list[CachedRequestData] = []
        preempted_ids: set[str] = set()

        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(
                request.num_tokens - request.num_computed_tokens,
                budget,
                self.max_model_len - request.num_computed_tokens,
            )
            if num_new <= 0:
                i += 1
                continue
            new_blocks = kv.allocate_slots(request, num_new)
            while new_blocks is None:
                victim = self.running.pop()  # never one scheduled this step: those sit before index i
                self._preempt(victim)
                preempted_ids.add(victim.req_id)
                if victim is request:
                    break
                new_blocks = kv.allocate_slots(request, num_new)
            if new_blocks is None:
                break
            cached_reqs.append(CachedRequestData(request.req_id, new_blocks, request.num_computed_tokens))
            num_scheduled[request.req_id] = num_new
            budget -= num_new
            i += 1

        if not preempted_ids:
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                request = self.waiting[0]
                hit_blocks, num_hit_tokens = kv.get_computed_blocks(request)
                num_new = request.num_tokens - num_hit_tokens
                if num_new > budget:
                    # Without chunked prefill a prompt waits for a step with room for all of it, unless it can
                    # never fit in one (a resumed request whose outputs outgrew the budget): then it is chunked.
                    fits_in_a_step = num_new <= self.max_num_batched_tokens
                    if not self.scheduler_config.enable_chunked_prefill and fits_in_a_step:
                        break
                    num_new = budget
                if kv.allocate_slots(request, num_new, hit_blocks, num_hit_tokens) is None:
                    break
                self.waiting.popleft()
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = num_hit_tokens
                request.num_computed_tokens = num_hit_tokens
                request.status = RequestStatus.RUNNING
                self.running.append(request)
                new_reqs.append(
                    NewRequestData(
                        req_id=request.req_id,
                        prompt_token_ids=list(request.prompt_token_ids),
                        output_token_ids=list(request.output_token_ids),
                        sampling_params=request.sampling_params,
                        block_ids=kv.get_block_ids(request.req_id),
                        num_computed_tokens=num_hit_tokens,
                        eos_token_id=request.eos_token_id,
                    )
                )
                num_scheduled[request.req_id] = num_new
                budget -= num_new

        finished_ids = self.finished_req_ids
        self.finished_req_ids = set()
        return SchedulerOutput(
            scheduled_new_reqs=new_reqs,
            scheduled_cached_reqs=cached_reqs,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=self.max_num_batched_tokens - budget,
            finished_req_ids=finished_ids,
            preempted_req_ids=preempted_ids,
        )

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> EngineCoreOutputs:
        """Advance the scheduled requests by the step's results: append sampled tokens, run stop checks, free
        finished requests' blocks. Returns one output per request that got tokens or prompt logprobs or finished.
        Requests aborted since ``schedule()`` are skipped.
        """
        row_of = {req_id: row for row, req_id in enumerate(runner_output.req_ids)}
        outputs: list[EngineCoreOutput] = []
        any_finished = False
        for req_id, num_tokens in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue
            request.num_computed_tokens += num_tokens
            row = row_of.get(req_id)
            sampled = runner_output.sampled_token_ids[row] if row is not None else []
            if sampled:
                assert request.num_computed_tokens == request.num_tokens, (
                    "sampled a token for a partial prefill"
                )
            new_token_ids = self._append_sampled(request, sampled)
            if len(sampled) > 1:  # multi-step decode: every sampled token but the last went through the model
                request.num_computed_tokens = request.num_tokens - 1
            prompt_logprobs = runner_output.prompt_logprobs.get(req_id)
            finished = request.is_finished()
            if not new_token_ids and prompt_logprobs is None and not finished:
                continue
            new_logprobs = None
            if runner_output.logprobs is not None and row is not None:
                row_logprobs = runner_output.logprobs[row]
                if row_logprobs is not None:
                    new_logprobs = row_logprobs[: len(new_token_ids)]
            outputs.append(
                EngineCoreOutput(
                    req_id=req_id,
                    new_token_ids=new_token_ids,
                    new_logprobs=new_logprobs,
                    new_prompt_logprobs=prompt_logprobs,
                    finish_reason=request.get_finish_reason(),
                    stop_reason=request.stop_reason,
                    num_cached_tokens=max(request.num_cached_tokens, 0),
                )
            )
            if finished:
                any_finished = True
                self.kv_cache_manager.free(request)
                del self.requests[req_id]
                self.finished_req_ids.add(req_id)
        if any_finished:
            self.running = [r for r in self.running if not r.is_finished()]
        return EngineCoreOutputs(outputs=outputs, scheduler_stats=self.make_stats(), timestamp=time.time())

    def add_decode_lookahead(self, scheduler_output: SchedulerOutput, num_steps: int) -> int:
        """Turn a decode-only step into up to ``num_steps`` decode steps run back to back on the device.

        Reserves KV slots for the extra tokens (their ids are appended to each request's new_block_ids) and returns
        how many steps to run: 1 (unchanged) when any request is new or prefilling, when requests are waiting, or
        when blocks are short; fewer near max_model_len. ``update_from_output`` then takes several sampled tokens
        per request; tokens past a stop — max_tokens included — are dropped there. (A request that reaches its
        max_tokens mid-round does not shorten the round for the whole batch: with many requests one of them is
        nearly always a few tokens from its end, which used to halve the tokens per round.)
        """
        if num_steps <= 1 or self.waiting or scheduler_output.scheduled_new_reqs:
            return 1
        requests = [self.requests[c.req_id] for c in scheduler_output.scheduled_cached_reqs]
        if not requests or any(scheduler_output.num_scheduled_tokens[r.req_id] != 1 for r in requests):
            return 1
        for r in requests:
            if r.num_computed_tokens + 1 != r.num_tokens:
                return 1
            num_steps = min(num_steps, self.max_model_len - r.num_tokens + 1)
        if num_steps <= 1:
            return 1
        # The round computes positions num_tokens - 1 onwards, num_steps of them.
        extra = self._reserve_slots_all(requests, [r.num_tokens - 1 + num_steps for r in requests])
        if extra is None:
            return 1
        for cached, blocks in zip(scheduler_output.scheduled_cached_reqs, extra):
            cached.new_block_ids.extend(blocks)
        return num_steps

    def schedule_continuation(
        self, prev: SchedulerOutput, prev_steps: int, num_steps: int
    ) -> tuple[SchedulerOutput, int] | None:
        """The decode round after ``prev`` (a multi-step round of ``prev_steps`` steps still running on the
        device), scheduled before ``update_from_output(prev, ...)`` so that the device does not wait for the host
        between rounds. Returns the round's SchedulerOutput and step count (≤ ``num_steps``), or None: then
        schedule normally once ``prev`` is updated.

        Every request of ``prev`` that is still running continues, except those whose length stop falls inside
        ``prev`` (known arithmetically). One that stops on a sampled token inside ``prev`` (EOS, a stop token) is
        only found when ``prev`` is updated: it finishes then, and ``update_from_output`` ignores what this round
        computed for it (its KV slots, freed by then, are written only before any later round's writes). Nothing is
        admitted or preempted: None when requests wait, when blocks are short, or when no request continues.
        Request state is not changed here, only KV slots are reserved; the caller updates ``prev`` and then this
        round, in that order.
        """
        if prev_steps <= 1 or num_steps <= 1 or self.waiting:
            return None
        continuing: list[Request] = []
        for req_id in prev.num_scheduled_tokens:
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # finished (by an earlier round's update) or aborted
            room = min(
                request.max_tokens - request.num_output_tokens, self.max_model_len - request.num_tokens
            )
            if room <= prev_steps:
                continue  # reaches its length stop inside prev
            num_steps = min(num_steps, self.max_model_len - (request.num_tokens + prev_steps) + 1)
            continuing.append(request)
        if not continuing or num_steps <= 1:
            return None
        # After prev a request holds num_tokens + prev_steps tokens, the last not computed yet: this round computes
        # positions num_tokens + prev_steps - 1 onwards, num_steps of them.
        extra = self._reserve_slots_all(
            continuing, [r.num_tokens + prev_steps - 1 + num_steps for r in continuing]
        )
        if extra is None:
            return None
        cached = [
            CachedRequestData(r.req_id, blocks, r.num_tokens + prev_steps - 1)
            for r, blocks in zip(continuing, extra)
        ]
        finished_ids = self.finished_req_ids
        self.finished_req_ids = set()
        so = SchedulerOutput(
            scheduled_new_reqs=[],
            scheduled_cached_reqs=cached,
            num_scheduled_tokens={r.req_id: 1 for r in continuing},
            total_num_scheduled_tokens=len(continuing),
            finished_req_ids=finished_ids,
        )
        return so, num_steps

    # ------------------------------------------------------------------ internals
    def _reserve_slots_all(self, requests: list[Request], num_slots: list[int]) -> list[list[int]] | None:
        """KV blocks for the first ``num_slots[i]`` positions of each request (decode rounds), for all of them or
        for none: the appended block ids per request, or None with nothing changed when blocks are short."""
        kv = self.kv_cache_manager
        needed = sum(
            max(0, -(-n // self.block_size) - kv.num_blocks_held(r.req_id))
            for r, n in zip(requests, num_slots)
        )
        if needed > kv.num_free_blocks:
            return None
        extra = [kv.reserve_slots(r, n) for r, n in zip(requests, num_slots)]
        assert all(blocks is not None for blocks in extra)
        return extra  # type: ignore[return-value]

    def _preempt(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _append_sampled(self, request: Request, sampled: list[int]) -> list[int]:
        """Append ``sampled`` to the request up to its first stop; returns the tokens kept."""
        params = request.sampling_params
        if (
            len(sampled) > 1
            and (params.ignore_eos or request.eos_token_id is None)
            and not params.stop_token_ids
        ):
            # Only the length stop applies: find it arithmetically instead of token by token.
            room = min(
                request.max_tokens - request.num_output_tokens, self.max_model_len - request.num_tokens
            )
            kept = sampled[: max(room, 0)] if len(sampled) >= room else sampled
            request.append_output_token_ids(kept)
            if len(kept) >= room:
                request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return kept
        kept = []
        for token_id in sampled:
            request.append_output_token_ids([token_id])
            kept.append(token_id)
            if self._check_stop(request, token_id):
                break
        return kept

    def _check_stop(self, request: Request, token_id: int) -> bool:
        """Stop checks after appending ``token_id``: EOS, then stop_token_ids (both only from min_tokens
        outputs on), then length (max_tokens or max_model_len). Sets the finished status and stop_reason."""
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if token_id == request.eos_token_id and not params.ignore_eos:
                request.status = RequestStatus.FINISHED_STOPPED
                return True
            if params.stop_token_ids and token_id in params.stop_token_ids:
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = token_id
                return True
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= self.max_model_len:
            request.status = RequestStatus.FINISHED_LENGTH_CAPPED
            return True
        return False
