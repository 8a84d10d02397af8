"""One request as the engine core sees it: token ids, progress and status."""

from __future__ import annotations

import enum
import time

from inferd.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5

    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """A request inside the engine core.

    ``num_computed_tokens`` catches up with ``num_tokens`` step by step: that one rule gives chunked prefill,
    prefix caching (hits advance it at once) and preemption (it goes back to 0).
    """

    __slots__ = (
        "all_token_ids",
        "arrival_time",
        "block_hashes",
        "eos_token_id",
        "max_tokens",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_preemptions",
        "output_token_ids",
        "prompt_token_ids",
        "req_id",
        "sampling_params",
        "status",
        "stop_reason",
    )

    def __init__(
        self,
        req_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None,
        max_model_len: int,
        arrival_time: float | None = None,
    ) -> None:
        self.req_id = req_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = time.time() if arrival_time is None else arrival_time
        self.status = RequestStatus.WAITING
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1  # prefix-cache hit tokens at first scheduling; -1 until then
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        self.block_hashes: list[
            int
        ] = []  # chained hashes of this request's full blocks, kept by the KV manager
        budget = max_model_len - len(prompt_token_ids)
        self.max_tokens = (
            budget if sampling_params.max_tokens is None else min(sampling_params.max_tokens, budget)
        )

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token_ids(self, token_ids: list[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    def is_finished(self) -> bool:
        return self.status.is_finished()

    def get_finish_reason(self) -> str | None:
        return self.status.finish_reason()

    def __repr__(self) -> str:
        return (
            f"Request({self.req_id!r}, status={self.status.name}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens})"
        )
