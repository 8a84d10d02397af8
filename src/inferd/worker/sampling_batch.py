"""Per-request sampling state of the running batch, turned into a SamplingMetadata each step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inferd.layers.sampler import SamplingMetadata
from inferd.sampling_params import SamplingParams

_INITIAL_SLOTS = 8


@dataclass(slots=True)
class _ReqState:
    """Cached scalars of one request (host side)."""

    temperature: float  # 0.0 when greedy
    top_k: int
    top_p: float
    min_p: float
    presence: float
    frequency: float
    repetition: float
    seeded: bool
    num_logprobs: int | None
    min_tokens: int
    min_tokens_ids: list[int]  # masked while num_output_tokens < min_tokens
    bias_cols: list[int]
    bias_values: list[float]
    num_output_tokens: int
    slot: int = 0  # row of the occurrence tensors; 0 = no penalties (an all-zero row)
    pending: list[int] = field(default_factory=list)  # outputs not yet counted into the slot

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return self.presence != 0.0 or self.frequency != 0.0 or self.repetition != 1.0


@dataclass(slots=True)
class _StaticPart:
    """The part of a batch's metadata that only changes when its requests change."""

    metadata: SamplingMetadata  # output_counts / min_tokens left None
    slot_idx: torch.Tensor | None  # [B] int64 rows of the occurrence tensors; None when no penalties
    penalized: list[_ReqState]
    min_tokens_rows: list[tuple[int, _ReqState]]


class SamplingBatch:
    """Sampling state of the requests the worker holds, keyed by ``req_id``.

    Seeded requests own a ``torch.Generator`` on ``device`` seeded with their seed; it survives preemption
    (``remove_request(..., finished=False)``) so a resumed request continues the same random stream.
    Token occurrence counts for penalties live on the device, one row per penalized request, and are updated
    incrementally, so per-step host work is O(batch size + new tokens).
    """

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._reqs: dict[str, _ReqState] = {}
        self._generators: dict[str, torch.Generator] = {}
        # Occurrence tensors of penalized requests; row 0 stays all-zero/False.
        self._counts: torch.Tensor | None = None  # [S, V] int32, occurrences among outputs
        self._prompt_mask: torch.Tensor | None = None  # [S, V] bool, token is in the prompt
        self._free_slots: list[int] = []
        self._version = 0
        self._static_key: tuple[int, tuple[str, ...]] | None = None
        self._static: _StaticPart | None = None

    # ------------------------------------------------------------------ membership
    def add_request(
        self,
        req_id: str,
        sampling_params: SamplingParams,
        prompt_token_ids: list[int],
        output_token_ids: list[int],
        eos_token_id: int | None,
    ) -> None:
        """Start tracking ``req_id`` (or re-add it after preemption, with its outputs so far).

        A seeded request's generator is created on first add and kept across preemption.
        Raises ``ValueError`` when a ``logit_bias`` token id is outside the model's vocabulary.
        """
        sp = sampling_params
        bias = sp.logit_bias or {}
        bad = [t for t in bias if t >= self.vocab_size]
        if bad:
            raise ValueError(
                f"logit_bias has token id(s) {sorted(bad)[:5]} outside the vocabulary of size {self.vocab_size}; "
                "use ids below the vocabulary size."
            )
        if req_id in self._reqs:
            self.remove_request(req_id, finished=False)
        greedy = sp.sampling_type_greedy
        stop_ids = set(sp.stop_token_ids or [])
        if eos_token_id is not None and not sp.ignore_eos:
            stop_ids.add(eos_token_id)
        state = _ReqState(
            temperature=0.0 if greedy else float(sp.temperature),
            top_k=0 if greedy else min(sp.top_k, self.vocab_size),
            top_p=1.0 if greedy else float(sp.top_p),
            min_p=0.0 if greedy else float(sp.min_p),
            presence=float(sp.presence_penalty),
            frequency=float(sp.frequency_penalty),
            repetition=float(sp.repetition_penalty),
            seeded=sp.seed is not None,
            num_logprobs=sp.logprobs,
            min_tokens=sp.min_tokens,
            min_tokens_ids=sorted(t for t in stop_ids if 0 <= t < self.vocab_size),
            bias_cols=list(bias.keys()),
            bias_values=list(bias.values()),
            num_output_tokens=len(output_token_ids),
        )
        if sp.seed is not None and req_id not in self._generators:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(sp.seed)
            self._generators[req_id] = generator
        if state.has_penalties:
            state.slot = self._alloc_slot()
            state.pending = list(output_token_ids)
            if state.repetition != 1.0 and prompt_token_ids:
                assert self._prompt_mask is not None
                ids = self._to_device(prompt_token_ids, torch.int64)  # [P]
                self._prompt_mask[state.slot].index_fill_(0, ids, True)
        self._reqs[req_id] = state
        self._version += 1

    def remove_request(self, req_id: str, finished: bool = True) -> None:
        """Drop ``req_id``'s batch state; with ``finished=False`` (preemption) keep its generator.

        Unknown ids are ignored, so finishing a preempted request only frees its generator.
        """
        state = self._reqs.pop(req_id, None)
        if state is not None:
            if state.slot:
                self._free_slots.append(state.slot)
            self._version += 1
        if finished:
            self._generators.pop(req_id, None)

    def append_output_token(self, req_id: str, token_id: int) -> None:
        """Record a token sampled for ``req_id`` (it counts for penalties and min_tokens from the next step)."""
        state = self._reqs[req_id]
        state.num_output_tokens += 1
        if state.slot:
            state.pending.append(token_id)

    def __contains__(self, req_id: object) -> bool:
        return req_id in self._reqs

    def __len__(self) -> int:
        return len(self._reqs)

    # ------------------------------------------------------------------ per step
    def max_num_logprobs(self, req_ids: list[str]) -> int | None:
        """Largest ``logprobs`` asked by ``req_ids`` (0 = the chosen token only); None when none asked."""
        asked = [n for r in req_ids if (n := self._reqs[r].num_logprobs) is not None]
        return max(asked) if asked else None

    def make_metadata(self, req_ids: list[str]) -> SamplingMetadata:
        """Metadata for a logits batch whose row i belongs to ``req_ids[i]`` (all added, none twice)."""
        key = (self._version, tuple(req_ids))
        if self._static is None or self._static_key != key:
            self._static = self._build_static(req_ids)
            self._static_key = key
        static = self._static
        md = static.metadata
        output_counts = None
        if static.slot_idx is not None:
            self._flush_pending(static.penalized)
            assert self._counts is not None
            output_counts = self._counts.index_select(0, static.slot_idx)  # [B, V]
        min_rows: list[int] = []
        min_cols: list[int] = []
        for row, state in static.min_tokens_rows:
            if state.num_output_tokens < state.min_tokens:
                min_rows.extend([row] * len(state.min_tokens_ids))
                min_cols.extend(state.min_tokens_ids)
        min_tokens = None
        if min_rows:
            rc = self._to_device([min_rows, min_cols], torch.int64)  # [2, n]
            min_tokens = (rc[0], rc[1])
        return SamplingMetadata(
            temperature=md.temperature,
            top_k=md.top_k,
            top_p=md.top_p,
            min_p=md.min_p,
            presence_penalties=md.presence_penalties,
            frequency_penalties=md.frequency_penalties,
            repetition_penalties=md.repetition_penalties,
            all_greedy=md.all_greedy,
            all_random=md.all_random,
            no_top_k=md.no_top_k,
            no_top_p=md.no_top_p,
            no_min_p=md.no_min_p,
            no_penalties=md.no_penalties,
            filter_rows=md.filter_rows,
            max_top_k=md.max_top_k,
            prompt_mask=md.prompt_mask,
            output_counts=output_counts,
            logit_bias=md.logit_bias,
            min_tokens=min_tokens,
            generators=md.generators,
            max_num_logprobs=md.max_num_logprobs,
        )

    # ------------------------------------------------------------------ internals
    def _build_static(self, req_ids: list[str]) -> _StaticPart:
        states = [self._reqs[r] for r in req_ids]
        floats = self._to_device(
            [
                [s.temperature for s in states],
                [s.top_p for s in states],
                [s.min_p for s in states],
                [s.presence for s in states],
                [s.frequency for s in states],
                [s.repetition for s in states],
            ],
            torch.float32,
        )  # [6, B]
        ints = self._to_device([[s.top_k for s in states], [s.slot for s in states]], torch.int64)  # [2, B]
        penalized = [s for s in states if s.slot]
        slot_idx = ints[1] if penalized else None
        prompt_mask = None
        if any(s.repetition != 1.0 for s in penalized):
            assert self._prompt_mask is not None and slot_idx is not None
            prompt_mask = self._prompt_mask.index_select(0, slot_idx)  # [B, V]
        bias_rows: list[int] = []
        bias_cols: list[int] = []
        bias_values: list[float] = []
        for row, s in enumerate(states):
            if s.bias_cols:
                bias_rows.extend([row] * len(s.bias_cols))
                bias_cols.extend(s.bias_cols)
                bias_values.extend(s.bias_values)
        logit_bias = None
        if bias_rows:
            rc = self._to_device([bias_rows, bias_cols], torch.int64)  # [2, n]
            logit_bias = (rc[0], rc[1], self._to_device(bias_values, torch.float32))
        generators = {
            row: self._generators[r]
            for row, (r, s) in enumerate(zip(req_ids, states, strict=True))
            if s.seeded and not s.greedy
        }
        filtering = [row for row, s in enumerate(states) if s.top_k > 0 or s.top_p < 1.0]
        filter_rows = None
        if 0 < len(filtering) < len(states):
            filter_rows = self._to_device(filtering, torch.int64)  # [R]
        top_ks = [states[row].top_k for row in filtering]
        max_top_k = max(top_ks) if top_ks and min(top_ks) > 0 else 0
        metadata = SamplingMetadata(
            temperature=floats[0],
            top_k=ints[0],
            top_p=floats[1],
            min_p=floats[2],
            presence_penalties=floats[3],
            frequency_penalties=floats[4],
            repetition_penalties=floats[5],
            all_greedy=all(s.greedy for s in states),
            all_random=not any(s.greedy for s in states),
            no_top_k=all(s.top_k == 0 for s in states),
            no_top_p=all(s.top_p >= 1.0 for s in states),
            no_min_p=all(s.min_p == 0.0 for s in states),
            no_penalties=not penalized,
            filter_rows=filter_rows,
            max_top_k=max_top_k,
            prompt_mask=prompt_mask,
            logit_bias=logit_bias,
            generators=generators,
            max_num_logprobs=self.max_num_logprobs(req_ids),
        )
        min_tokens_rows = [(row, s) for row, s in enumerate(states) if s.min_tokens > 0 and s.min_tokens_ids]
        return _StaticPart(metadata, slot_idx, penalized, min_tokens_rows)

    def _flush_pending(self, states: list[_ReqState]) -> None:
        """Add the outputs recorded since the last step into the device occurrence counts."""
        slots: list[int] = []
        tokens: list[int] = []
        for s in states:
            if s.pending:
                slots.extend([s.slot] * len(s.pending))
                tokens.extend(s.pending)
                s.pending.clear()
        if not slots:
            return
        assert self._counts is not None
        idx = self._to_device([slots, tokens], torch.int64)  # [2, n]
        ones = torch.ones(len(slots), dtype=torch.int32, device=self.device)
        self._counts.index_put_((idx[0], idx[1]), ones, accumulate=True)

    def _alloc_slot(self) -> int:
        """A zeroed row of the occurrence tensors, growing them when none is free."""
        if not self._free_slots:
            old = 0 if self._counts is None else self._counts.shape[0]
            new = max(_INITIAL_SLOTS, 2 * old)
            counts = torch.zeros(new, self.vocab_size, dtype=torch.int32, device=self.device)
            mask = torch.zeros(new, self.vocab_size, dtype=torch.bool, device=self.device)
            if self._counts is not None and self._prompt_mask is not None:
                counts[:old].copy_(self._counts)
                mask[:old].copy_(self._prompt_mask)
            self._counts, self._prompt_mask = counts, mask
            self._free_slots.extend(range(new - 1, max(old, 1) - 1, -1))
        slot = self._free_slots.pop()
        assert self._counts is not None and self._prompt_mask is not None
        self._counts[slot].zero_()
        self._prompt_mask[slot].zero_()
        return slot

    def _to_device(self, data: list, dtype: torch.dtype) -> torch.Tensor:
        """One host→device copy (pinned, non-blocking on CUDA)."""
        t = torch.tensor(data, dtype=dtype, pin_memory=self._pin)
        return t.to(self.device, non_blocking=True) if self.device.type != "cpu" else t
