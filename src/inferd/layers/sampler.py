"""Token sampler: logits of the rows that sample this step → one token per row (+ logprobs).

Order of operations (as vLLM v1): raw logprobs (when asked) → float32 copy → logit bias → min-tokens mask →
penalties → greedy argmax | temperature → min-p → top-k → top-p → exponential-race sampling. The float32 copy is
made only when a stage modifies the logits; otherwise greedy and temperature-only rows read them as they come
(e.g. bf16: float32 holds every bf16 value exactly, so the argmax and the race are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inferd import kernels
from inferd.engine.core_types import TokenLogprobs

# Rows of logits processed at once by compute_prompt_logprobs, bounded by this many float32 elements.
_PROMPT_LOGPROBS_CHUNK_ELEMS = 1 << 26
# Largest top-k served by torch.topk on candidates; beyond it (or with a top-k-less top-p row) one full sort.
_TOPK_PATH_MAX_K = 1024


@dataclass(slots=True)
class SamplingMetadata:
    """Per-step sampling inputs of a batch, row i = the i-th request that samples this step.

    All tensors live on the logits' device. The ``no_*`` / ``all_*`` flags are exact summaries of the
    tensors, so the sampler may skip a stage without looking at device data.
    """

    temperature: torch.Tensor  # [B] float32, 0.0 for greedy rows
    top_k: torch.Tensor  # [B] int64, 0 = off
    top_p: torch.Tensor  # [B] float32, 1.0 = off
    min_p: torch.Tensor  # [B] float32, 0.0 = off
    presence_penalties: torch.Tensor  # [B] float32
    frequency_penalties: torch.Tensor  # [B] float32
    repetition_penalties: torch.Tensor  # [B] float32
    all_greedy: bool
    all_random: bool
    no_top_k: bool
    no_top_p: bool
    no_min_p: bool
    no_penalties: bool
    # Rows with top-k or top-p on, when only some are (None: all rows, or see no_top_k / no_top_p).
    filter_rows: torch.Tensor | None = None  # [R] int64
    # Largest top_k among the filtered rows when all of them have top-k on, else 0.
    max_top_k: int = 0
    # Token occurrence, for penalties; None when no_penalties.
    prompt_mask: torch.Tensor | None = (
        None  # [B, V] bool, token is in the prompt (rows w/o repetition penalty: any)
    )
    output_counts: torch.Tensor | None = None  # [B, V] int32, occurrences among the outputs so far
    # Sparse logit bias: logits[rows[j], cols[j]] += values[j]; None when no row has one.
    logit_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # Sparse min-tokens mask: logits[rows[j], cols[j]] = -inf; None when no row is below its min_tokens.
    min_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
    # Row -> the request's own generator (seeded rows that sample randomly only).
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    # Largest number of top logprobs any row asked for (0 = only the chosen token's); None = no row asked.
    max_num_logprobs: int | None = None


@dataclass(slots=True)
class LogprobsTensors:
    """Logprobs of one token per row: the chosen (or target) token in column 0, then the top K by logprob."""

    token_ids: torch.Tensor  # [B, K+1] int64
    logprobs: torch.Tensor  # [B, K+1] float32
    ranks: torch.Tensor  # [B] int64, rank of the chosen token in the full distribution (1 = best)


@dataclass(slots=True)
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [B] int64, on the logits' device
    logprobs: LogprobsTensors | None  # None when metadata.max_num_logprobs is None


class Sampler(torch.nn.Module):
    """Samples one token per row. Never modifies ``logits``; makes no host sync except per seeded row draws.

    Unseeded rows' random draws are keyed by one seed tensor the sampler keeps on the logits' device (drawn from
    torch's default generator at the first random batch, so ``torch.manual_seed`` makes a run reproducible) and
    the kernel steps it on the device at every call (no ``randint`` per step)."""

    def __init__(self) -> None:
        super().__init__()
        self._seed: torch.Tensor | None = None  # [1] int64 in [0, 2^62)

    def _draw_seed(self, device: torch.device) -> torch.Tensor:
        if self._seed is None or self._seed.device != device:
            self._seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)
        return self._seed

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """``logits`` [B, V] (any float dtype) → sampled token ids [B] and, if asked, their raw logprobs."""
        num_logprobs = metadata.max_num_logprobs
        raw_logprobs = None
        if num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]

        filters = not (metadata.no_min_p and metadata.no_top_k and metadata.no_top_p)
        needs_processing = (
            (not metadata.all_greedy and filters)
            or not metadata.no_penalties
            or metadata.logit_bias is not None
            or metadata.min_tokens is not None
        )
        if needs_processing:
            logits = logits.to(torch.float32, copy=True)  # [B, V]
            if metadata.logit_bias is not None:
                apply_logit_bias(logits, *metadata.logit_bias)
            if metadata.min_tokens is not None:
                apply_min_tokens(logits, *metadata.min_tokens)
            if not metadata.no_penalties:
                apply_penalties(logits, metadata)

        if metadata.all_greedy:
            sampled = logits.argmax(dim=-1)
        else:
            greedy = None if metadata.all_random else logits.argmax(dim=-1)
            sampled = _sample_random(logits, metadata, self._draw_seed(logits.device))
            if greedy is not None:
                sampled = torch.where(metadata.temperature == 0.0, greedy, sampled)

        lp = None
        if raw_logprobs is not None:
            assert num_logprobs is not None
            lp = _gather_logprobs(raw_logprobs, sampled, min(num_logprobs, logits.shape[-1]))
        return SamplerOutput(sampled_token_ids=sampled, logprobs=lp)


def apply_logit_bias(
    logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor
) -> None:
    """In place: ``logits[rows[j], cols[j]] += values[j]``."""
    logits.index_put_((rows, cols), values, accumulate=True)


def apply_min_tokens(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """In place: ``logits[rows[j], cols[j]] = -inf`` (stop tokens of rows still below min_tokens)."""
    logits.index_put_((rows, cols), logits.new_full((), float("-inf")))


def apply_penalties(logits: torch.Tensor, metadata: SamplingMetadata) -> None:
    """In place, as HF/vLLM: repetition (over prompt + outputs) divides positive logits and multiplies negative
    ones; then ``logits -= frequency * count_in_outputs + presence * (count_in_outputs > 0)``."""
    assert metadata.output_counts is not None
    counts = metadata.output_counts  # [B, V] int32
    output_mask = counts > 0  # [B, V]
    seen = output_mask if metadata.prompt_mask is None else output_mask | metadata.prompt_mask
    rep = metadata.repetition_penalties.unsqueeze(1)  # [B, 1]
    penalty = torch.where(seen, rep, 1.0)  # [B, V]
    logits.copy_(torch.where(logits > 0, logits / penalty, logits * penalty))
    logits.sub_(metadata.frequency_penalties.unsqueeze(1) * counts)
    logits.sub_(metadata.presence_penalties.unsqueeze(1) * output_mask)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> None:
    """In place: mask tokens whose probability is below ``min_p`` × the row's top probability."""
    probs = logits.softmax(dim=-1)  # [B, V]
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)  # [B, 1]
    logits.masked_fill_(probs < threshold, float("-inf"))


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, max_top_k: int = 0
) -> None:
    """In place: keep each row's ``top_k`` best tokens (0 = all; ties at the k-th value are kept), then the
    smallest set of best tokens whose probability reaches ``top_p`` (the best token is always kept).

    ``max_top_k`` > 0 promises every row has ``0 < top_k <= max_top_k``; small values then use ``topk`` on
    ``max_top_k`` candidates instead of sorting the vocabulary.
    """
    if top_k is None and top_p is None:
        return
    if top_k is not None and 0 < max_top_k <= _TOPK_PATH_MAX_K:
        _top_k_first(logits, top_k, top_p, max_top_k)
        return
    vocab_size = logits.shape[-1]
    logits_sort, logits_idx = logits.sort(dim=-1, descending=False)  # [B, V] ascending
    if top_k is not None:
        k = top_k.masked_fill(top_k <= 0, vocab_size).clamp(max=vocab_size)  # [B]
        kth_value = logits_sort.gather(1, (vocab_size - k).unsqueeze(1))  # [B, 1]
        logits_sort.masked_fill_(logits_sort < kth_value, float("-inf"))
    if top_p is not None:
        probs_cum = logits_sort.softmax(dim=-1).cumsum_(dim=-1)  # [B, V]
        drop = probs_cum <= (1.0 - top_p).unsqueeze(1)  # [B, V]
        drop[:, -1] = False
        logits_sort.masked_fill_(drop, float("-inf"))
    logits.scatter_(dim=-1, index=logits_idx, src=logits_sort)


def _top_k_first(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor | None, max_top_k: int
) -> None:
    """apply_top_k_top_p when every row has top-k on and the largest k is small: no full sort."""
    top_vals, top_idx = logits.topk(max_top_k, dim=-1)  # [B, K] descending
    kth_value = top_vals.gather(1, (top_k - 1).clamp(min=0).unsqueeze(1))  # [B, 1]
    if top_p is None:
        logits.masked_fill_(logits < kth_value, float("-inf"))
        return
    top_vals.masked_fill_(top_vals < kth_value, float("-inf"))
    probs = top_vals.softmax(dim=-1)  # [B, K]
    mass_before = probs.cumsum(dim=-1) - probs  # [B, K], mass of the better candidates
    drop = (mass_before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    top_vals.masked_fill_(drop, float("-inf"))
    logits.fill_(float("-inf")).scatter_(dim=-1, index=top_idx, src=top_vals)


def _sample_random(logits: torch.Tensor, metadata: SamplingMetadata, seed: torch.Tensor) -> torch.Tensor:
    """Temperature → min-p → top-k/top-p → exponential race: ``argmax(softmax(logits / T) / q)``, q ~ Exp(1)
    per token. ``logits`` [B, V] (float32 when a filter is on, else any float dtype) is modified only when a filter
    is on; with temperature alone one fused kernel reads it once.

    Seeded rows draw their q rows from their own generators into a compact [G, V] tensor (``q_rows`` maps each
    row to its q row, −1 for none); the other rows draw inside the kernel, keyed by ``seed`` (the sampler's [1]
    int64 tensor, stepped on the device by the call), so an unseeded batch allocates no q."""
    temperature = metadata.temperature  # [B]
    if not metadata.all_random:  # greedy rows (T = 0, replaced by their argmax later) get any valid T
        temperature = torch.where(temperature == 0.0, 1.0, temperature)
    if not (metadata.no_min_p and metadata.no_top_k and metadata.no_top_p):
        logits.div_(temperature.unsqueeze(1))
        temperature = torch.ones_like(temperature)
        if not metadata.no_min_p:
            apply_min_p(logits, metadata.min_p)
        if not (metadata.no_top_k and metadata.no_top_p):
            top_k = None if metadata.no_top_k else metadata.top_k
            top_p = None if metadata.no_top_p else metadata.top_p
            rows = metadata.filter_rows
            if rows is None:
                apply_top_k_top_p(logits, top_k, top_p, metadata.max_top_k)
            else:
                sub = logits.index_select(0, rows)  # [R, V]
                apply_top_k_top_p(
                    sub,
                    None if top_k is None else top_k.index_select(0, rows),
                    None if top_p is None else top_p.index_select(0, rows),
                    metadata.max_top_k,
                )
                logits.index_copy_(0, rows, sub)
    q, q_rows = _seeded_draws(logits, metadata.generators)
    return kernels.temperature_race_sample(logits, temperature, q, q_rows, seed, advance_seed=True)


def _seeded_draws(
    logits: torch.Tensor, generators: dict[int, torch.Generator]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Exp(1) draws of the seeded rows, each from its own generator, as ``temperature_race_sample``'s ``q`` and
    ``q_rows``: (None, None) without seeded rows, (q [B, V], None) when every row is seeded, else q [G, V] and
    q_rows [B] int32 (−1: the row draws in the kernel). Launches device work only, no host sync."""
    if not generators:
        return None, None
    num_rows, vocab_size = logits.shape
    rows = sorted(generators)
    q = torch.empty((len(rows), vocab_size), dtype=torch.float32, device=logits.device)  # [G, V]
    q_rows = None
    if len(rows) < num_rows:
        q_rows = torch.full((num_rows,), -1, dtype=torch.int32, device=logits.device)  # [B]
    for g, row in enumerate(rows):
        q[g].exponential_(generator=generators[row])
        if q_rows is not None:
            q_rows[row].fill_(g)
    return q, q_rows


def _gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: int) -> LogprobsTensors:
    """``logprobs`` [N, V] float32, ``token_ids`` [N] → the token's logprob and rank plus the top ``num_logprobs``."""
    token_ids = token_ids.to(torch.int64)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))  # [N, 1]
    ranks = (logprobs > chosen).sum(dim=-1) + 1  # [N]
    if num_logprobs > 0:
        top_lp, top_ids = logprobs.topk(num_logprobs, dim=-1)  # [N, K], sorted descending
        ids = torch.cat([token_ids.unsqueeze(1), top_ids], dim=1)  # [N, K+1]
        lps = torch.cat([chosen, top_lp], dim=1)  # [N, K+1]
    else:
        ids, lps = token_ids.unsqueeze(1), chosen
    return LogprobsTensors(token_ids=ids, logprobs=lps, ranks=ranks)


def compute_prompt_logprobs(
    logits: torch.Tensor, target_token_ids: torch.Tensor, num_logprobs: int
) -> LogprobsTensors:
    """Logprobs of the next prompt token at each position: ``logits`` [N, V] (raw), ``target_token_ids`` [N].

    Returns the target's logprob and rank first, then the ``num_logprobs`` best tokens, per position.
    """
    if num_logprobs < 0:
        raise ValueError(f"num_logprobs must be non-negative, got {num_logprobs}.")
    num_rows, vocab_size = logits.shape
    num_logprobs = min(num_logprobs, vocab_size)
    chunk = max(1, _PROMPT_LOGPROBS_CHUNK_ELEMS // max(vocab_size, 1))
    if num_rows == 0:
        return _gather_logprobs(logits.float(), target_token_ids, num_logprobs)
    parts = [
        _gather_logprobs(
            torch.log_softmax(logits[start : start + chunk].float(), dim=-1),
            target_token_ids[start : start + chunk],
            num_logprobs,
        )
        for start in range(0, num_rows, chunk)
    ]
    if len(parts) == 1:
        return parts[0]
    return LogprobsTensors(
        token_ids=torch.cat([p.token_ids for p in parts]),
        logprobs=torch.cat([p.logprobs for p in parts]),
        ranks=torch.cat([p.ranks for p in parts]),
    )


def logprobs_to_lists(t: LogprobsTensors, num_logprobs: list[int]) -> list[TokenLogprobs]:
    """Move ``t`` to the host in one transfer; row i keeps the chosen token + its first ``num_logprobs[i]``
    alternatives (clamped to the K the tensors hold)."""
    num_rows, width = t.token_ids.shape
    if len(num_logprobs) != num_rows:
        raise ValueError(
            f"num_logprobs has {len(num_logprobs)} entries for {num_rows} rows; give one per row."
        )
    lp_bits = t.logprobs.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)  # [B, K+1]
    packed = torch.cat([t.token_ids.to(torch.int64), lp_bits, t.ranks.to(torch.int64).unsqueeze(1)], dim=1)
    host = packed.cpu()  # [B, 2K+3]
    ids = host[:, :width].tolist()
    lps = host[:, width : 2 * width].to(torch.int32).view(torch.float32).tolist()
    ranks = host[:, 2 * width].tolist()
    out = []
    for i, n in enumerate(num_logprobs):
        keep = min(max(n, 0), width - 1) + 1
        out.append(TokenLogprobs(token_ids=ids[i][:keep], logprobs=lps[i][:keep], rank=ranks[i]))
    return out
