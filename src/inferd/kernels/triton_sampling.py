"""Triton exponential-race sampling for rows with temperature only (no top-k / top-p / min-p).

Same contract as ``inferd.kernels.reference.temperature_race_sample``: ``argmax_v(logits[b, v] / T[b] −
log(max(q[b, v], tiny)))``, i.e. ``argmax(softmax(logits / T) / q)`` without materialising the softmax, with q ~
Exp(1) per token. Rows given a ``q`` row (seeded requests) read it; the other rows draw their q inside the kernel
from Philox-4x32-10 keyed by the 64-bit ``seed`` tensor (counter = (column quad, row): a token's draw depends on
seed, row and column only), so the common case reads the logits once (any float dtype, converted to float32 in
registers) and nothing else. The seed is read from device memory, so a call costs no host sync and replays
correctly inside a CUDA graph; with ``advance_seed`` the pick kernel steps it in place after the race has read it
(a Weyl step mod 2^62), so a caller that keeps one seed tensor draws new numbers at every call without launching a
``randint`` (the sampler does). Drawn rows score in log2 units with the MUFU ``lg2.approx`` on NVIDIA GPUs; rows
given q use ``log`` as the reference does (bit-equal on CPU). The vocabulary is split across programs; a second,
one-program-per-row kernel picks each row's winning split.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.triton_pdl import wait_and_release

_SUB_V = 1024  # columns per sub-block; each Philox call (one per lane) draws for 4 sub-blocks
_BLOCK_V = 4 * _SUB_V
_TINY = float(torch.finfo(torch.float32).tiny)
_SEED_HIGH = 2**62
_SEED_STEP = 0x1E3779B97F4A7C15  # odd: seed ← (seed + step) mod 2^62 visits every value before repeating
_SEED_MASK = _SEED_HIGH - 1
# q row modes (constexpr): every row draws in the kernel / row b reads q[b] / row b reads q[q_rows[b]] when >= 0.
_DRAW_ALL, _Q_ALL, _Q_ROWS = 0, 1, 2


@triton.jit
def _race_step(best, best_i, row_ptr, cols, mask, inv_t, log_q):
    """Fold ``logits[cols] * inv_t - log_q`` into the per-lane running maximum (first index wins ties)."""
    lg = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
    score = tl.where(mask, lg * inv_t - log_q, float("-inf"))
    take = score > best
    return tl.where(take, score, best), tl.where(take, cols, best_i)


@triton.jit
def _log2(x, FAST_LOG: tl.constexpr):
    """log2 of positive normal floats; ``FAST_LOG``: the MUFU approximation (rel. error ~2^-22, CUDA only)."""
    if FAST_LOG:
        return tl.inline_asm_elementwise(
            "lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.log2(x)


@triton.jit
def _log2_exp1(bits, FAST_LOG: tl.constexpr):
    """uint32 Philox output → log2(q), q ~ Exp(1): q = -ln(1 - w), w = (bits + 0.5) / 2^32 ∈ (0, 1].

    Small q (the draws that win races) come from small w, which keeps full float32 precision; below w = 1/16 a
    series replaces ``-ln(1 - w)`` (whose ``1 - w`` would lose it). q ≥ 2^-33, so no ``tiny`` guard is needed.
    """
    w = (bits.to(tl.float32) + 0.5) * 2.3283064365386963e-10
    s = 1.0 + w * (0.5 + w * (0.33333334 + w * (0.25 + w * (0.2 + w * 0.16666667))))
    big = -0.6931471805599453 * _log2(tl.maximum(1.0 - w, 5.9604645e-08), FAST_LOG)
    return _log2(tl.where(w < 0.0625, w * s, big), FAST_LOG)


@triton.jit
def _race_drawn(
    best,
    best_i,
    row_ptr,
    row,
    start,
    cols_per_split,
    vocab,
    seed,
    inv_t,
    SUB_V: tl.constexpr,
    FAST_LOG: tl.constexpr,
):
    """The race over one split with q drawn here; scores are in log2 units (× 1/ln 2), which keeps the order."""
    lane = tl.arange(0, SUB_V)
    zero = lane.to(tl.uint32) * 0
    ctr_row = zero + row.to(tl.uint32)
    end = start + cols_per_split
    scale = inv_t * 1.4426950408889634
    for off in range(0, cols_per_split, 4 * SUB_V):
        base = start + off
        ctr = zero + (base // 4 + lane).to(tl.uint32)  # unique per (row, column quad) for any split layout
        r0, r1, r2, r3 = tl.philox(seed, ctr, ctr_row, zero, zero)
        cols = base + lane
        log_q = _log2_exp1(r0, FAST_LOG)
        best, best_i = _race_step(best, best_i, row_ptr, cols, (cols < vocab) & (cols < end), scale, log_q)
        cols += SUB_V
        log_q = _log2_exp1(r1, FAST_LOG)
        best, best_i = _race_step(best, best_i, row_ptr, cols, (cols < vocab) & (cols < end), scale, log_q)
        cols += SUB_V
        log_q = _log2_exp1(r2, FAST_LOG)
        best, best_i = _race_step(best, best_i, row_ptr, cols, (cols < vocab) & (cols < end), scale, log_q)
        cols += SUB_V
        log_q = _log2_exp1(r3, FAST_LOG)
        best, best_i = _race_step(best, best_i, row_ptr, cols, (cols < vocab) & (cols < end), scale, log_q)
    return best, best_i


@triton.jit
def _race_given(
    best, best_i, row_ptr, q_row_ptr, start, cols_per_split, vocab, inv_t, tiny, SUB_V: tl.constexpr
):
    lane = tl.arange(0, SUB_V)
    end = start + cols_per_split
    for off in range(0, cols_per_split, SUB_V):
        cols = start + off + lane
        mask = (cols < vocab) & (cols < end)
        q = tl.load(q_row_ptr + cols, mask=mask, other=1.0).to(tl.float32)
        best, best_i = _race_step(best, best_i, row_ptr, cols, mask, inv_t, tl.log(tl.maximum(q, tiny)))
    return best, best_i


@triton.jit(do_not_specialize=["n_rows"])
def _race_kernel(
    logits_ptr,
    q_ptr,
    q_rows_ptr,
    seed_ptr,
    temp_ptr,
    best_val_ptr,
    best_idx_ptr,
    n_rows,
    vocab,
    stride_l,
    stride_q,
    cols_per_split,
    n_splits,
    tiny,
    Q_MODE: tl.constexpr,
    SUB_V: tl.constexpr,
    FAST_LOG: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_l
    inv_t = 1.0 / tl.load(temp_ptr + row).to(tl.float32)
    start = split * cols_per_split
    best = tl.full([SUB_V], float("-inf"), tl.float32)
    best_i = tl.zeros([SUB_V], tl.int32)
    if Q_MODE == 0:
        seed = tl.load(seed_ptr)
        best, best_i = _race_drawn(
            best, best_i, row_ptr, row, start, cols_per_split, vocab, seed, inv_t, SUB_V, FAST_LOG
        )
    elif Q_MODE == 1:
        q_row_ptr = q_ptr + row.to(tl.int64) * stride_q
        best, best_i = _race_given(
            best, best_i, row_ptr, q_row_ptr, start, cols_per_split, vocab, inv_t, tiny, SUB_V
        )
    else:
        q_row = tl.load(q_rows_ptr + row)
        if q_row >= 0:
            q_row_ptr = q_ptr + q_row.to(tl.int64) * stride_q
            best, best_i = _race_given(
                best, best_i, row_ptr, q_row_ptr, start, cols_per_split, vocab, inv_t, tiny, SUB_V
            )
        else:
            seed = tl.load(seed_ptr)
            best, best_i = _race_drawn(
                best, best_i, row_ptr, row, start, cols_per_split, vocab, seed, inv_t, SUB_V, FAST_LOG
            )
    val = tl.max(best, 0)
    # Lowest index among equal maxima, as torch.argmax picks the first.
    idx = tl.min(tl.where(best == val, best_i, 2147483647), 0)
    tl.store(best_val_ptr + row * n_splits + split, val)
    tl.store(best_idx_ptr + row * n_splits + split, idx)


@triton.jit(do_not_specialize=["n_splits"])
def _race_pick_kernel(
    best_val_ptr,
    best_idx_ptr,
    out_ptr,
    seed_ptr,
    n_splits,
    BLOCK: tl.constexpr,
    ADVANCE_SEED: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Row ``row``'s token: ``best_idx[row, s]`` of the first split ``s`` holding the row's largest ``best_val``
    (``torch.argmax`` then ``gather``), stored as int64. ``ADVANCE_SEED``: program 0 also steps the seed."""
    wait_and_release(USE_PDL)
    row = tl.program_id(0)
    splits = tl.arange(0, BLOCK)
    mask = splits < n_splits
    base = row.to(tl.int64) * n_splits
    vals = tl.load(best_val_ptr + base + splits, mask=mask, other=float("-inf"))  # [BLOCK]
    best = tl.max(vals, 0)
    winner = tl.min(tl.where(mask & (vals == best), splits, BLOCK), 0)
    idx = tl.load(best_idx_ptr + base + winner)
    tl.store(out_ptr + row, idx.to(tl.int64))
    if ADVANCE_SEED:
        if row == 0:
            # (seed + _SEED_STEP) & _SEED_MASK: seed < 2^62, so the sum fits in int64 (no wrapping, no multiply).
            seed = tl.load(seed_ptr)
            tl.store(seed_ptr, (seed + 0x1E3779B97F4A7C15) & 0x3FFFFFFFFFFFFFFF)


def _pick(
    best_val: torch.Tensor, best_idx: torch.Tensor, max_splits: int, advance: torch.Tensor | None
) -> torch.Tensor:
    """best_val [B, S] float32, best_idx [B, S] int32 (contiguous) → ``best_idx[b, argmax_s best_val[b, s]]``
    [B] int64, the first split among equal maxima. ``max_splits`` ≥ S sizes the kernel's block (one compiled
    variant per vocabulary, whatever the split count). ``advance``: a [1] int64 seed stepped in place."""
    n_rows, n_splits = best_val.shape
    out = torch.empty(n_rows, dtype=torch.int64, device=best_val.device)
    if n_rows == 0:
        return out
    _race_pick_kernel[(n_rows,)](
        best_val,
        best_idx,
        out,
        out if advance is None else advance,  # unread placeholder without a seed to advance
        n_splits,
        BLOCK=triton.next_power_of_2(max(max_splits, n_splits)),
        ADVANCE_SEED=advance is not None,
        num_warps=1,
        **pdl.launch_kwargs(best_val.device),
    )
    return out


def _fast_log(device: torch.device) -> bool:
    """The PTX ``lg2.approx`` path needs an NVIDIA GPU (not the interpreter, not ROCm)."""
    return (
        device.type == "cuda" and torch.version.hip is None and os.environ.get("TRITON_INTERPRET", "0") != "1"
    )


def temperature_race_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    q: torch.Tensor | None = None,
    q_rows: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    advance_seed: bool = False,
) -> torch.Tensor:
    """logits [B, V] float, temperature [B] (> 0), q [G, V] Exp(1) draws or None, q_rows [B] int32 or None,
    seed [1] int64 (in [0, 2^62)) or None → token ids [B] int64 (see ``reference.temperature_race_sample``).

    Rows without a q row draw Philox from ``seed`` (a fresh ``torch.randint`` on the device when None): the same
    seed gives the same tokens, independently of how the vocabulary is split across programs. ``advance_seed``
    steps the given ``seed`` in place on the device once the draws have read it, so the next call with the same
    tensor draws new numbers (no host sync, no extra kernel, CUDA-graph safe); otherwise it is not modified. Two
    kernels: the race over vocabulary splits, then the per-row pick of the winning split.
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if q is not None and q.shape[0] == 0:
        q = None
    if q is None:
        mode = _DRAW_ALL
    elif q_rows is None:
        if q.shape[0] != n_rows:
            raise ValueError(f"q has {q.shape[0]} rows for {n_rows} logits rows; pass q_rows to map them.")
        mode = _Q_ALL
    else:
        mode = _Q_ROWS
    if q is not None and q.stride(-1) != 1:
        q = q.contiguous()
    if advance_seed and seed is None:
        raise ValueError("advance_seed needs a seed tensor to advance")
    advance = seed if advance_seed else None
    if mode != _Q_ALL and seed is None:
        seed = torch.randint(0, _SEED_HIGH, (1,), dtype=torch.int64, device=device)
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count if logits.is_cuda else 8
    target_splits = max(1, (4 * n_sm + n_rows - 1) // max(n_rows, 1))
    max_splits = triton.cdiv(vocab, _BLOCK_V)
    n_splits = max(1, min(target_splits, max_splits))
    cols_per_split = triton.cdiv(triton.cdiv(vocab, n_splits), _BLOCK_V) * _BLOCK_V
    n_splits = triton.cdiv(vocab, cols_per_split)
    best_val = torch.empty((n_rows, n_splits), dtype=torch.float32, device=device)
    best_idx = torch.empty((n_rows, n_splits), dtype=torch.int32, device=device)
    _race_kernel[(n_rows, n_splits)](
        logits,
        logits if q is None else q,  # unread placeholder without q
        temperature if q_rows is None else q_rows,  # unread placeholder without q_rows
        temperature if seed is None else seed,  # unread placeholder in _Q_ALL mode
        temperature,
        best_val,
        best_idx,
        n_rows,
        vocab,
        logits.stride(0),
        0 if q is None else q.stride(0),
        cols_per_split,
        n_splits,
        _TINY,
        Q_MODE=mode,
        SUB_V=_SUB_V,
        FAST_LOG=_fast_log(device),
        num_warps=8,
        **pdl.launch_kwargs(device),
    )
    return _pick(best_val, best_idx, max_splits, advance)
