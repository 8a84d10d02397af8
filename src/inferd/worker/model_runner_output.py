"""What the model runner returns to the scheduler after one step."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferd.engine.core_types import TokenLogprobs


@dataclass(slots=True)
class ModelRunnerOutput:
    req_ids: list[str]  # batch order, as in SchedulerOutput.num_scheduled_tokens
    # One list per request: [token] when this step reached the end of its known tokens, [] for a partial prefill.
    sampled_token_ids: list[list[int]]
    # Per request, one TokenLogprobs per sampled token when the request asked for logprobs, else None.
    logprobs: list[list[TokenLogprobs] | None] | None = None
    # req_id -> prompt logprobs for the prompt positions covered by this step's chunk.
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)
