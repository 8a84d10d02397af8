"""Typed messages between the engine frontend and the engine core (they cross a process boundary)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferd.sampling_params import SamplingParams


@dataclass(slots=True)
class EngineCoreRequest:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams  # n == 1 here: the frontend fans n > 1 out into child requests
    eos_token_id: int | None
    arrival_time: float


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs at one position: the chosen (or prompt) token first, then the top-k alternatives."""

    token_ids: list[int]
    logprobs: list[float]
    rank: int  # rank of the chosen token in the full distribution (1 = most likely)


@dataclass(slots=True)
class EngineCoreOutput:
    req_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] | None = None  # one per new token when logprobs were asked for
    # Prompt logprobs computed this step, one per prompt position covered (None for the first prompt token).
    new_prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class SchedulerStats:
    """The scheduler's state after a step; prefix-cache and preemption counts are cumulative."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    prefix_cache_queries: int = 0  # tokens looked up
    prefix_cache_hits: int = 0  # tokens found
    num_preemptions: int = 0


@dataclass(slots=True)
class EngineCoreOutputs:
    outputs: list[EngineCoreOutput] = field(default_factory=list)
    scheduler_stats: SchedulerStats | None = None
    timestamp: float = 0.0
