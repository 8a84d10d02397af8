"""Frontend output processing: engine-core outputs -> RequestOutputs (text, stop strings, logprobs, n > 1, stats)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from inferd.engine.core_types import EngineCoreOutput, EngineCoreRequest, TokenLogprobs
from inferd.engine.detokenizer import IncrementalDetokenizer, TokenDecoder
from inferd.engine.stats import FinishedRequestStats, IterationStats
from inferd.outputs import (
    CompletionOutput,
    Logprob,
    PositionLogprobs,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    SampleLogprobs,
)
from inferd.sampling_params import RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(slots=True)
class ProcessedOutputs:
    """What one batch of engine-core outputs gave: the user-facing outputs, the children the core must abort
    (a stop string ended them), and stats (``num_generation_tokens`` counts every token the core sent)."""

    request_outputs: list[RequestOutput] = field(default_factory=list)
    reqs_to_abort: list[str] = field(default_factory=list)  # child ids the core must stop (stop strings)
    iteration_stats: IterationStats = field(default_factory=IterationStats)
    # request id -> the exception that processing its outputs raised; such a request is dropped (its unfinished
    # children are in reqs_to_abort) and the other requests of the batch go on.
    failed: dict[str, Exception] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Child:
    """One of the n completions of a request (one engine-core request)."""

    parent: _Parent
    index: int
    req_id: str
    detokenizer: IncrementalDetokenizer | None
    logprobs: SampleLogprobs | None  # None: not asked for
    cumulative_logprob: float | None
    text: str = ""
    held: int = 0  # trailing characters of `text` not shown yet (they may start a stop string)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    dirty: bool = False  # something new for the user since the last RequestOutput
    sent_text: int = 0  # DELTA: how much was already reported
    sent_tokens: int = 0
    sent_logprobs: int = 0

    def completion(self, delta: bool) -> CompletionOutput:
        visible = len(self.text) - self.held
        start_text, start_tok, start_lp = (
            (self.sent_text, self.sent_tokens, self.sent_logprobs) if delta else (0, 0, 0)
        )
        logprobs = self.logprobs[start_lp:] if self.logprobs is not None else None
        out = CompletionOutput(
            index=self.index,
            text=self.text[start_text:visible],
            token_ids=self.token_ids[start_tok:],
            cumulative_logprob=self.cumulative_logprob,
            logprobs=logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )
        if delta:
            self.sent_text = visible
            self.sent_tokens = len(self.token_ids)
            self.sent_logprobs = len(self.logprobs) if self.logprobs is not None else 0
        return out


@dataclass(slots=True, eq=False)
class _Parent:
    """One user request and its n children."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    stops: list[str]
    stop_chars: frozenset[str]  # characters a proper prefix of a stop string can end with
    num_unfinished: int
    prompt_logprobs: PromptLogprobs | None  # None: not asked for
    children: list[_Child] = field(default_factory=list)
    first_token_time: float | None = None
    last_token_time: float | None = None
    num_cached_tokens: int = 0
    prompt_logprobs_source: int | None = None  # index of the child whose prompt logprobs are kept
    sent_prompt_logprobs: int = 0


class OutputProcessor:
    """Turns batches of ``EngineCoreOutput`` into ``RequestOutput`` for the offline API and the server.

    Fans a request with ``n > 1`` out into n engine-core requests (ids ``f"{i}_{request_id}"``) and gathers
    their outputs back into one ``RequestOutput`` per request and batch. Applies stop strings (the core
    only knows stop token ids), builds logprob dicts and per-iteration stats. Not thread-safe: call it
    from one thread (or event loop).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.tokenizer = tokenizer
        self.decoder = TokenDecoder(tokenizer) if tokenizer is not None else None
        self._parents: dict[str, _Parent] = {}
        self._children: dict[str, _Child] = {}

    # ------------------------------------------------------------------ requests
    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None,
        arrival_time: float,
    ) -> list[EngineCoreRequest]:
        """Register a request; return the engine-core requests to schedule (n == 1: one, same id).

        Raises ``ValueError`` when ``request_id`` (or a child id it needs) is in use, or when stop
        strings are asked for without a tokenizer.
        """
        params = sampling_params
        n = params.n
        child_ids = [request_id] if n == 1 else [f"{i}_{request_id}" for i in range(n)]
        if request_id in self._parents or any(c in self._children for c in child_ids):
            raise ValueError(f"Request id {request_id!r} is already in use; give each request a unique id.")
        if params.stop and self.decoder is None:
            raise ValueError("stop strings need a tokenizer; use stop_token_ids or load the tokenizer.")
        stops = list(params.stop or [])
        parent = _Parent(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            arrival_time=arrival_time,
            stops=stops,
            stop_chars=frozenset(c for stop in stops for c in stop[:-1]),
            num_unfinished=n,
            prompt_logprobs=[] if params.prompt_logprobs is not None else None,
        )
        decoder = self.decoder if params.detokenize else None
        want_logprobs = params.logprobs is not None
        core_requests = []
        for i, child_id in enumerate(child_ids):
            detok = None
            if decoder is not None:
                detok = IncrementalDetokenizer(
                    decoder,
                    parent.prompt_token_ids,
                    params.skip_special_tokens,
                    params.spaces_between_special_tokens,
                )
            child = _Child(
                parent, i, child_id, detok, [] if want_logprobs else None, 0.0 if want_logprobs else None
            )
            parent.children.append(child)
            self._children[child_id] = child
            if n == 1:
                child_params = params
            elif params.seed is not None:
                child_params = params.clone(n=1, seed=params.seed + i)
            else:
                child_params = params.clone(n=1)
            core_requests.append(
                EngineCoreRequest(child_id, parent.prompt_token_ids, child_params, eos_token_id, arrival_time)
            )
        self._parents[request_id] = parent
        return core_requests

    def abort_requests(self, request_ids: Iterable[str]) -> list[str]:
        """Forget the given (parent) requests; return the ids of their unfinished children to abort in the core.

        Unknown ids are ignored, and so are later outputs of the aborted children; no RequestOutput or
        stats are made for them.
        """
        to_abort: list[str] = []
        for request_id in request_ids:
            parent = self._parents.pop(request_id, None)
            if parent is None:
                continue
            for child in parent.children:
                if child.finish_reason is None:
                    to_abort.append(child.req_id)
                    self._children.pop(child.req_id, None)
        return to_abort

    def has_unfinished_requests(self) -> bool:
        return bool(self._parents)

    def get_num_unfinished_requests(self) -> int:
        return len(self._parents)

    # ------------------------------------------------------------------ outputs
    def process_outputs(self, outputs: list[EngineCoreOutput], now: float | None = None) -> ProcessedOutputs:
        """Apply one batch of engine-core outputs; ``now`` (default ``time.time()``) is on the arrival times' clock.

        At most one ``RequestOutput`` per request and batch, none when no completion got a token or finished.
        CUMULATIVE: all n completions so far (index order) and all prompt logprobs; DELTA: only completions
        with something new, with only the new part (``cumulative_logprob`` is still the running total), and
        prompt logprobs once; FINAL_ONLY: one output once all n finished. Text that may start a stop string
        is held back until it cannot (or the completion ends). Outputs of unknown, aborted or finished
        children are ignored.
        """
        now = time.time() if now is None else now
        result = ProcessedOutputs()
        changed: dict[str, _Parent] = {}
        for out in outputs:
            child = self._children.get(out.req_id)
            if child is None:
                continue
            try:
                if self._process_child(child, out, now, result):
                    changed[child.parent.request_id] = child.parent
            except Exception as e:  # a bug in one request's processing fails that request only
                self._fail(child.parent.request_id, e, result)
        for parent in changed.values():
            if parent.request_id in result.failed:
                continue
            try:
                request_output = self._make_request_output(parent, now)
            except Exception as e:
                self._fail(parent.request_id, e, result)
                continue
            if request_output is not None:
                result.request_outputs.append(request_output)
        return result

    def _fail(self, request_id: str, error: Exception, result: ProcessedOutputs) -> None:
        result.failed[request_id] = error
        result.reqs_to_abort.extend(self.abort_requests([request_id]))

    def _process_child(
        self, child: _Child, out: EngineCoreOutput, now: float, result: ProcessedOutputs
    ) -> bool:
        """Apply one output to its child; return whether the user has something new."""
        parent = child.parent
        if out.num_cached_tokens > parent.num_cached_tokens:
            parent.num_cached_tokens = out.num_cached_tokens
        if out.new_prompt_logprobs and parent.prompt_logprobs is not None:
            if parent.prompt_logprobs_source in (None, child.index):
                parent.prompt_logprobs_source = child.index
                self._add_prompt_logprobs(parent, out.new_prompt_logprobs)
        new_ids = out.new_token_ids
        if not new_ids and not out.finished:
            return False
        stats = result.iteration_stats
        if new_ids:
            stats.num_generation_tokens += len(new_ids)
            if child.first_token_time is None:
                child.first_token_time = now
                stats.num_prompt_tokens += len(parent.prompt_token_ids)
                stats.time_to_first_tokens.append(now - parent.arrival_time)
                if parent.first_token_time is None:
                    parent.first_token_time = now
            elif child.last_token_time is not None:
                stats.inter_token_latencies.append(now - child.last_token_time)
            child.last_token_time = parent.last_token_time = now
        stop_str = self._append_tokens(child, out)
        if stop_str is not None:
            child.finish_reason, child.stop_reason = "stop", stop_str
            if not out.finished:
                result.reqs_to_abort.append(child.req_id)
        elif out.finished:
            child.finish_reason, child.stop_reason = out.finish_reason, out.stop_reason
            if child.detokenizer is not None:
                child.text += child.detokenizer.flush()
        if child.finish_reason is not None:
            child.held = 0
            self._children.pop(child.req_id, None)
            parent.num_unfinished -= 1
            stats.finished_requests.append(_finished_stats(child, child.finish_reason, now))
        elif parent.stop_chars and child.text and not parent.params.include_stop_str_in_output:
            child.held = (
                _stop_prefix_len(child.text, parent.stops) if child.text[-1] in parent.stop_chars else 0
            )
        child.dirty = True
        return True

    def _append_tokens(self, child: _Child, out: EngineCoreOutput) -> str | None:
        """Append the new tokens (text, logprobs); return the stop string that ended the completion, if any."""
        parent = child.parent
        params = parent.params
        detok = child.detokenizer
        check_stops = bool(parent.stops)
        logprobs = child.logprobs
        new_logprobs = out.new_logprobs if logprobs is not None else None
        for k, token_id in enumerate(out.new_token_ids):
            child.token_ids.append(token_id)
            if logprobs is not None and new_logprobs is not None and k < len(new_logprobs):
                position = new_logprobs[k]
                logprobs.append(self._position_logprobs(position, params.detokenize))
                child.cumulative_logprob = (child.cumulative_logprob or 0.0) + position.logprobs[0]
            if detok is None:
                continue
            delta = detok.decode_next(token_id)
            if not delta:
                continue
            start = len(child.text)
            child.text += delta
            if check_stops and len(child.token_ids) > params.min_tokens:
                stop = _find_stop(child.text, start, parent.stops, params.include_stop_str_in_output)
                if stop is not None:
                    stop_str, cut = stop
                    child.text = child.text[:cut]
                    return stop_str
        return None

    def _position_logprobs(self, position: TokenLogprobs, detokenize: bool) -> PositionLogprobs:
        """{token_id: Logprob}: the chosen token first (with its rank), then the top-k ranked 1..k."""
        decode = self.decoder.decode_token if (detokenize and self.decoder is not None) else None
        ids, lps = position.token_ids, position.logprobs
        chosen = ids[0]
        result = {chosen: Logprob(lps[0], position.rank, decode(chosen) if decode else None)}
        for rank in range(1, len(ids)):
            token_id = ids[rank]
            if token_id not in result:
                result[token_id] = Logprob(lps[rank], rank, decode(token_id) if decode else None)
        return result

    def _add_prompt_logprobs(self, parent: _Parent, positions: list[TokenLogprobs | None]) -> None:
        dest = parent.prompt_logprobs
        assert dest is not None
        if not dest and positions[0] is not None:
            dest.append(None)  # the first prompt token has no logprob
        for position in positions:
            dest.append(
                None if position is None else self._position_logprobs(position, parent.params.detokenize)
            )

    def _make_request_output(self, parent: _Parent, now: float) -> RequestOutput | None:
        kind = parent.params.output_kind
        finished = parent.num_unfinished == 0
        if finished:
            self._parents.pop(parent.request_id, None)
        elif kind == RequestOutputKind.FINAL_ONLY:
            return None
        prompt_logprobs = parent.prompt_logprobs
        if kind == RequestOutputKind.DELTA:
            outputs = [child.completion(delta=True) for child in parent.children if child.dirty]
            if prompt_logprobs is not None:
                new = prompt_logprobs[parent.sent_prompt_logprobs :]
                parent.sent_prompt_logprobs = len(prompt_logprobs)
                prompt_logprobs = new or None
        else:
            outputs = [child.completion(delta=False) for child in parent.children]
            if prompt_logprobs is not None:
                prompt_logprobs = list(prompt_logprobs)
        for child in parent.children:
            child.dirty = False
        metrics = RequestMetrics(
            parent.arrival_time,
            first_token_time=parent.first_token_time,
            last_token_time=parent.last_token_time,
            finished_time=now if finished else None,
        )
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=outputs,
            finished=finished,
            num_cached_tokens=parent.num_cached_tokens,
            metrics=metrics,
        )


def _finished_stats(child: _Child, finish_reason: str, now: float) -> FinishedRequestStats:
    parent = child.parent
    arrival = parent.arrival_time
    return FinishedRequestStats(
        finish_reason=finish_reason,
        e2e_latency=now - arrival,
        num_prompt_tokens=len(parent.prompt_token_ids),
        num_generation_tokens=len(child.token_ids),
        ttft=None if child.first_token_time is None else child.first_token_time - arrival,
        max_tokens_param=parent.params.max_tokens,
    )


def _find_stop(text: str, new_start: int, stops: list[str], include: bool) -> tuple[str, int] | None:
    """Earliest stop string that ends in ``text[new_start:]``: (the string, where to cut the text)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        index = text.find(stop, max(0, new_start - len(stop) + 1))
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    if best is None:
        return None
    index, stop = best
    return stop, index + len(stop) if include else index


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that a stop string starts with (shorter than that string)."""
    longest = min(max(len(s) for s in stops) - 1, len(text))
    for size in range(longest, 0, -1):
        suffix = text[-size:]
        if any(len(s) > size and s.startswith(suffix) for s in stops):
            return size
    return 0
