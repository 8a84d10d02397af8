"""What the scheduler hands to the model runner for one step."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferd.sampling_params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    """A request the runner has not seen, or one resumed after preemption (then output_token_ids is not empty)."""

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]  # the whole block table
    num_computed_tokens: int  # tokens already in the KV cache (prefix-cache hits)
    eos_token_id: int | None = None


@dataclass(slots=True)
class CachedRequestData:
    """A request the runner already holds; only what changed."""

    req_id: str
    new_block_ids: list[int]  # appended to its block table
    num_computed_tokens: int


@dataclass(slots=True)
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    # req_id -> tokens to compute this step; its order is the batch order.
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # Requests that finished or were aborted since the last step: the runner drops their state.
    # Preempted ones are listed apart: the runner drops their batch state but keeps seeded generators.
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0
