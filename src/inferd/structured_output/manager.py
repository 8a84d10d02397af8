"""Per-request grammar matchers on the worker: compile in the background, fill the batch's token bitmask, mask the
logits in place, advance on each sampled token.

Wiring in the model runner (a few lines):

* on a new request: ``add_request(req_id, params, eos_token_id, prompt_token_ids, output_token_ids)``
  (a request resumed after preemption keeps its matcher; the call is then a no-op);
* on a finished one: ``remove_request(req_id)``;
* before sampling: ``apply_bitmask(logits, sample_req_ids)``; after: ``accept_token(req_id, token_id)`` per row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from inferd.sampling_params import SamplingParams
from inferd.structured_output.grammar import compile_spec, spec_of

if TYPE_CHECKING:
    import xgrammar as xgr

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _GrammarState:
    compiled: Future[Any]  # Future[xgr.CompiledGrammar]
    stop_token_ids: list[int]  # the tokens that end the request (EOS + stop_token_ids)
    reasoning: tuple[int, int] | None  # (start, end) token ids; the grammar starts once reasoning has ended
    in_reasoning: bool = False
    matcher: Any = None  # xgr.GrammarMatcher once compiled
    failed: bool = False  # compilation failed: only stop tokens are allowed
    pending: list[int] = field(default_factory=list)  # tokens accepted before the matcher existed


class StructuredOutputManager:
    """Grammar state of the requests with ``sampling_params.structured_outputs``; the others cost nothing.

    Guarantees: after :meth:`apply_bitmask`, every constrained row's logits are ``-inf`` outside the tokens its
    grammar allows next (once the grammar is complete, only the request's EOS / stop tokens, so it finishes with
    "stop"); unconstrained rows are untouched. Compilation runs in a background thread and is awaited only when the
    request first samples. A grammar that fails to compile (the frontend validates, so only on internal errors)
    lets the request stop at once instead of breaking the batch.
    """

    def __init__(
        self,
        tokenizer_loader: Callable[[], Any],
        vocab_size: int,
        device: torch.device | str,
        max_threads: int | None = None,
        warm_up: bool = True,
    ) -> None:
        """``tokenizer_loader`` returns the HF tokenizer (or None); it is called once, in the background thread
        that compiles grammars: right away with ``warm_up`` (so the first constrained request does not hold up its
        batch while the vocabulary is prepared), else with the first constrained request. ``vocab_size`` is the
        model's (logits width, may exceed the tokenizer's)."""
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self._tokenizer_loader = tokenizer_loader
        self._max_threads = max_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
        self._executor: ThreadPoolExecutor | None = None
        self._compiler: Any = None  # xgr.GrammarCompiler, built in the executor
        self._batch_matcher: Any = None
        self._requests: dict[str, _GrammarState] = {}
        self._bitmask_host: torch.Tensor | None = None  # [rows, ceil(V/32)] int32, reused across steps
        if warm_up:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-grammar")
            self._executor.submit(self._warm_up)

    # ------------------------------------------------------------------ requests
    def add_request(
        self,
        req_id: str,
        params: SamplingParams,
        eos_token_id: int | None,
        prompt_token_ids: Sequence[int] = (),
        output_token_ids: Sequence[int] = (),
    ) -> None:
        """Start compiling the request's grammar (no-op without structured outputs or for a known ``req_id``).

        With ``reasoning_token_ids`` the grammar waits for the end of the model's reasoning: reasoning is open
        unless the last delimiter in the prompt is the end token (as vLLM: a prompt with neither leaves the model
        to reason first). ``output_token_ids`` (tokens generated before a restart) are replayed.
        """
        so = params.structured_outputs
        if so is None or req_id in self._requests:
            return
        stops = [t for t in [eos_token_id, *(params.stop_token_ids or [])] if t is not None]
        state = _GrammarState(
            compiled=self._submit_compile(params),
            stop_token_ids=list(dict.fromkeys(stops)),
            reasoning=so.reasoning_token_ids,
        )
        if state.reasoning is not None:
            state.in_reasoning = _reasoning_open(prompt_token_ids, state.reasoning)
        self._requests[req_id] = state
        for token_id in output_token_ids:
            self.accept_token(req_id, token_id)

    def remove_request(self, req_id: str) -> None:
        self._requests.pop(req_id, None)

    def has_request(self, req_id: str) -> bool:
        return req_id in self._requests

    def accept_token(self, req_id: str, token_id: int) -> bool:
        """Advance ``req_id``'s matcher by the sampled ``token_id``; False when the grammar rejects it (the
        matcher then stays where it was). Requests without a grammar always accept."""
        state = self._requests.get(req_id)
        if state is None or state.failed:
            return True
        if state.in_reasoning:
            assert state.reasoning is not None
            if token_id == state.reasoning[1]:
                state.in_reasoning = False
            return True
        if state.matcher is None:
            state.pending.append(token_id)
            return True
        if state.matcher.is_terminated():
            return token_id in state.stop_token_ids
        ok = bool(state.matcher.accept_token(token_id))
        if not ok:
            logger.warning("Request %s: token %d is outside its grammar.", req_id, token_id)
        return ok

    def is_terminated(self, req_id: str) -> bool:
        """Whether ``req_id``'s grammar has accepted its final stop token (False without a grammar)."""
        state = self._requests.get(req_id)
        return state is not None and state.matcher is not None and bool(state.matcher.is_terminated())

    # ------------------------------------------------------------------ per step
    def bitmask(self, req_ids: Sequence[str]) -> tuple[torch.Tensor, list[int]] | None:
        """The host bitmask [len(req_ids), ceil(V/32)] int32 and the rows it constrains (rows not listed are
        unspecified); None when no row is constrained this step. Waits for pending compilations of these rows."""
        if not self._requests:
            return None
        rows = [
            i
            for i, r in enumerate(req_ids)
            if (s := self._requests.get(r)) is not None and not s.in_reasoning
        ]
        if not rows:
            return None
        import xgrammar as xgr

        width = -(-self.vocab_size // 32)
        if self._bitmask_host is None or self._bitmask_host.shape[0] < len(req_ids):
            num_rows = max(
                len(req_ids), 2 * (0 if self._bitmask_host is None else self._bitmask_host.shape[0])
            )
            pin = self.device.type == "cuda"
            self._bitmask_host = torch.empty((num_rows, width), dtype=torch.int32, pin_memory=pin)
        bitmask = self._bitmask_host[: len(req_ids)]
        matchers: list[Any] = []
        fill_rows: list[int] = []
        for i in rows:
            state = self._requests[req_ids[i]]
            matcher = self._matcher(req_ids[i], state)
            if matcher is None or matcher.is_terminated():
                _allow_only(bitmask[i], state.stop_token_ids)
            else:
                matchers.append(matcher)
                fill_rows.append(i)
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, fill_rows[0])
        elif matchers:
            if self._batch_matcher is None:
                self._batch_matcher = xgr.BatchGrammarMatcher(self._max_threads)
            self._batch_matcher.batch_fill_next_token_bitmask(matchers, bitmask, fill_rows)
        return bitmask, rows

    def apply_bitmask(self, logits: torch.Tensor, req_ids: Sequence[str]) -> None:
        """Mask ``logits`` [len(req_ids), V] in place (row i belongs to ``req_ids[i]``); no-op when no row has an
        active grammar."""
        result = self.bitmask(req_ids)
        if result is None:
            return
        import xgrammar as xgr

        bitmask, rows = result
        if logits.device.type != "cpu":
            bitmask = bitmask.to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size, indices=rows)

    # ------------------------------------------------------------------ internals
    def _submit_compile(self, params: SamplingParams) -> Future[Any]:
        assert params.structured_outputs is not None
        spec = spec_of(params.structured_outputs)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inferd-grammar")
        return self._executor.submit(lambda: compile_spec(self._get_compiler(), spec))

    def _warm_up(self) -> None:
        try:
            self._get_compiler()
        except Exception as e:  # reported again, per request, if a grammar is ever needed
            logger.debug("Structured outputs unavailable until a tokenizer loads: %s", e)

    def _get_compiler(self) -> xgr.GrammarCompiler:
        """Built on first use, in the compile thread (loading the tokenizer and its vocabulary takes a while)."""
        if self._compiler is None:
            import xgrammar as xgr

            tokenizer = self._tokenizer_loader()
            if tokenizer is None:
                raise ValueError("structured outputs need a tokenizer; this model has none.")
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgr.GrammarCompiler(info, max_threads=self._max_threads)
        return self._compiler

    def _matcher(self, req_id: str, state: _GrammarState) -> Any:
        """The request's matcher, created (waiting for compilation) on first use; None if compilation failed."""
        if state.matcher is not None or state.failed:
            return state.matcher
        import xgrammar as xgr

        try:
            compiled = state.compiled.result()
        except Exception:
            logger.exception("Request %s: its grammar did not compile; stopping it.", req_id)
            state.failed = True
            return None
        state.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=state.stop_token_ids or None)
        for token_id in state.pending:
            if not state.matcher.accept_token(token_id):
                logger.warning("Request %s: replayed token %d is outside its grammar.", req_id, token_id)
        state.pending = []
        return state.matcher


def _reasoning_open(token_ids: Sequence[int], reasoning: tuple[int, int]) -> bool:
    """Whether the model is reasoning after ``token_ids``: the last delimiter is the start token, or neither is
    present."""
    start, end = reasoning
    for t in reversed(token_ids):
        if t == end:
            return False
        if t == start:
            return True
    return True


def _allow_only(row: torch.Tensor, token_ids: list[int]) -> None:
    """Set the bitmask ``row`` [ceil(V/32)] int32 to allow exactly ``token_ids``."""
    row.zero_()
    for t in token_ids:
        word, bit = divmod(t, 32)
        if word < row.shape[0]:
            value = int(row[word]) | (1 << bit)
            row[word] = value - (1 << 32) if value >= 1 << 31 else value
