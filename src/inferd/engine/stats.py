"""Statistics the frontend gathers per iteration, handed to stat loggers (Prometheus, log lines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from inferd.engine.core_types import SchedulerStats


@dataclass(slots=True)
class FinishedRequestStats:
    finish_reason: str  # "stop" | "length" | "abort"
    e2e_latency: float  # seconds from arrival to finish
    num_prompt_tokens: int
    num_generation_tokens: int
    ttft: float | None  # seconds from arrival to first token, None if none came
    max_tokens_param: int | None = None


@dataclass(slots=True)
class IterationStats:
    """What one batch of engine-core outputs meant for the frontend's requests (child requests counted apart)."""

    num_prompt_tokens: int = 0  # prompt tokens of requests that got their first token in this iteration
    num_generation_tokens: int = 0
    time_to_first_tokens: list[float] = field(default_factory=list)  # seconds
    inter_token_latencies: list[float] = field(default_factory=list)  # seconds
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)


class StatLoggerBase(Protocol):
    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None) -> None:
        """Called by the frontend after each batch of outputs; must not block."""
