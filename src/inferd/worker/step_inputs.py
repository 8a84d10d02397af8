"""The model runner's per-request host state and the flat numpy inputs of one step built from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inferd.engine.scheduler_output import SchedulerOutput
from inferd.sampling_params import SamplingParams


@dataclass(slots=True)
class RequestState:
    """What the runner keeps per request between steps."""

    token_ids: list[int]  # prompt + outputs known so far
    num_prompt_tokens: int
    block_ids: list[int]
    num_computed_tokens: int
    prompt_logprobs: int | None
    logprobs: int | None
    # Sampling that needs the host between tokens (penalties, logprobs, min_tokens, grammars) rules out
    # multi-step decoding for the request; min_tokens only until it is reached.
    multistep_ok: bool = True
    min_tokens: int = 0


@dataclass(slots=True)
class StepInputs:
    """One step's flat inputs on the host; tensors are made from them by the eager or the graph path."""

    input_ids: np.ndarray  # [num_tokens] int64
    positions: np.ndarray  # [num_tokens] int64
    slots: np.ndarray  # [num_tokens] int64
    query_start_loc: np.ndarray  # [num_seqs + 1] int64
    seq_lens: np.ndarray  # [num_seqs] int64
    block_tables: np.ndarray  # [num_seqs, max_blocks] int32
    max_query_len: int
    sample_req_ids: list[str]
    sample_rows: list[int]  # rows of the hidden states to sample from
    # req_id -> (hidden rows, prompt positions they predict, first position of the chunk)
    prompt_logprob_rows: dict[str, tuple[list[int], list[int], int]]


def prepare_step_inputs(
    so: SchedulerOutput, requests: dict[str, RequestState], block_size: int, inputs_on_device: bool = False
) -> StepInputs:
    """Flat host inputs of one step, in ``so.num_scheduled_tokens`` order.

    ``inputs_on_device``: a decode round that continues one still running (every request computes one token that
    the host has not seen yet): ``input_ids`` are zeros, to be replaced on the device, and every request samples."""
    bs = block_size
    req_ids = list(so.num_scheduled_tokens)
    num_seqs = len(req_ids)
    total = so.total_num_scheduled_tokens
    input_ids = np.empty(total, dtype=np.int64)
    positions = np.empty(total, dtype=np.int64)
    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)
    seq_lens = np.empty(num_seqs, dtype=np.int64)
    states = [requests[r] for r in req_ids]
    max_blocks = max(len(s.block_ids) for s in states)
    block_tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
    sample_req_ids: list[str] = []
    sample_rows: list[int] = []
    prompt_rows: dict[str, tuple[list[int], list[int], int]] = {}
    offset = 0
    max_query_len = 0
    for i, (req_id, state) in enumerate(zip(req_ids, states)):
        n = so.num_scheduled_tokens[req_id]
        start = state.num_computed_tokens
        end = start + n
        if inputs_on_device:
            assert n == 1, "a continued round decodes one token per request"
            input_ids[offset] = 0
            positions[offset] = start
        elif n == 1:
            input_ids[offset] = state.token_ids[start]
            positions[offset] = start
        else:
            input_ids[offset : offset + n] = state.token_ids[start:end]
            positions[offset : offset + n] = np.arange(start, end)
        block_tables[i, : len(state.block_ids)] = state.block_ids
        seq_lens[i] = end
        max_query_len = max(max_query_len, n)
        if inputs_on_device or end == len(state.token_ids):
            sample_req_ids.append(req_id)
            sample_rows.append(offset + n - 1)
        if state.prompt_logprobs is not None and start < state.num_prompt_tokens - 1:
            last = min(end, state.num_prompt_tokens - 1)  # position p predicts prompt token p + 1
            rows = list(range(offset, offset + last - start))
            prompt_rows[req_id] = (rows, list(range(start + 1, last + 1)), start)
        elif state.prompt_logprobs is not None and start == 0:
            prompt_rows[req_id] = ([], [], 0)  # one-token prompt: only the leading None
        offset += n
        query_start_loc[i + 1] = offset
    seq_index = (
        np.repeat(np.arange(num_seqs), np.diff(query_start_loc)) if max_query_len > 1 else np.arange(num_seqs)
    )
    slots = block_tables[seq_index, positions // bs].astype(np.int64) * bs + positions % bs
    return StepInputs(
        input_ids=input_ids,
        positions=positions,
        slots=slots,
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_tables=block_tables,
        max_query_len=max_query_len,
        sample_req_ids=sample_req_ids,
        sample_rows=sample_rows,
        prompt_logprob_rows=prompt_rows,
    )


def multistep_ok(params: SamplingParams) -> bool:
    return (
        params.logprobs is None
        and params.prompt_logprobs is None
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
        and params.repetition_penalty == 1.0
        and getattr(params, "structured_outputs", None) is None
    )
