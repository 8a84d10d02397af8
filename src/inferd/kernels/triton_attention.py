"""Triton kernels for the paged KV cache: writing new keys/values, and attention over a mixed batch.

Same signatures and contracts as ``inferd.kernels.reference``. Every launch is CUDA-graph capturable: grid sizes and
compile-time choices come only from tensor shapes and the Python ints ``max_query_len`` / ``max_seq_len`` (which may
be upper bounds); per-sequence lengths are read on the device, and nothing syncs with the host.

Attention layout: one program owns one *q block* (up to ``BLOCK_Q`` consecutive query tokens of one sequence) times
all ``num_heads // num_kv_heads`` query heads of one KV head, packed as the ``BLOCK_M`` rows of one tile, so each KV
tile is read once per GQA group. KV tiles of ``TILE_N`` positions are gathered through the block table, so any
power-of-two block size works. Decode-only batches (``max_query_len == 1``) that would not fill the GPU split the
context of each sequence over ``num_splits`` programs (flash-decoding) and a second kernel merges the partial results.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.triton_pdl import release, wait, wait_and_release

LOG2E = 1.4426950408889634
_DEEP_DECODE_SMEM = 200 * 1024  # shared memory the deep decode tiles need (H100: 227 KiB)
MIN_SPLIT_TOKENS = 64  # a decode split covers at least this many context positions (tests lower it)
# Decode batches whose contexts are all at most this long run unsplit: one program per sequence and KV head and
# no merge kernel (H100, batch 1, context 64 / 160: 6.1 -> 4.1 / 5.75 us per layer, benchmarks/results/run-s7-1).
# The CUDA-graph runner's short-context graphs (worker/cuda_graph.SHORT_CONTEXT) rely on it.
UNSPLIT_MAX_SEQ_LEN = 256
MAX_SPLITS = 32
# Unsplit decode launches: a sequence's KV heads are neighbouring programs (grid axis 0), so they run together and
# read the same block-table entries and KV-cache pages (the cache interleaves heads within each position). Measured
# on an H100 it is worth little either way (-1.2% at 256 sequences, +0.9% at 96: benchmarks/results/run-s7-1).
DECODE_HEADS_FIRST = True
_DEFAULT_NUM_SMS = 132  # H100 SXM; used when no CUDA device is present (interpreter)


@triton.jit
def _store_kv_cache_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    num_kv_heads,
    head_dim,
    stride_tok,  # key and value share strides
    stride_head,
    stride_c_blk,  # k_cache and v_cache share strides
    stride_c_off,
    stride_c_head,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    blk = slot // BLOCK_SIZE
    off = slot % BLOCK_SIZE
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < num_kv_heads) & (d < head_dim)
    src = tok * stride_tok + h * stride_head + d
    dst = blk * stride_c_blk + off * stride_c_off + h * stride_c_head + d
    k = tl.load(key_ptr + src, mask=mask)
    v = tl.load(value_ptr + src, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64
) -> None:
    """Write ``key[i]``/``value[i]`` into cache slot ``slot_mapping[i]``; tokens with a negative slot are skipped.

    ``key``/``value`` may be strided views (e.g. slices of a fused qkv output) as long as ``head_dim`` is contiguous.
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _check_cache(k_cache, v_cache, num_kv_heads, head_dim)
    if key.stride() != value.stride() or key.stride(-1) != 1:
        key, value = key.contiguous(), value.contiguous()
    block_h = triton.next_power_of_2(num_kv_heads)
    block_d = triton.next_power_of_2(head_dim)
    _store_kv_cache_kernel[(num_tokens,)](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        num_kv_heads,
        head_dim,
        *key.stride()[:2],
        *k_cache.stride()[:3],
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d <= 2048 else 8,
    )


@triton.jit
def _find_seq_idx(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest ``b`` with ``query_start_loc[b] // BLOCK_Q + b <= q_block_idx`` (the sequence owning the q block)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if start <= q_block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs", "num_tokens", "num_q_blocks", "stride_bt", "num_splits"])
def _paged_attention_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim] contiguous; written without SPLIT
    part_acc_ptr,  # [num_tokens, num_heads, num_splits, HEAD_DIM_P] f32; written with SPLIT
    part_m_ptr,  # [num_tokens, num_heads, num_splits] f32: running max (log2 domain)
    part_l_ptr,  # [num_tokens, num_heads, num_splits] f32: softmax denominator
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    seq_order_ptr,  # [num_seqs] int32, longest first (HAS_ORDER): decode program pid serves seq_order[pid]
    qk_scale,  # softmax scale * log2(e)
    num_seqs,
    num_tokens,
    num_q_blocks,
    num_heads,
    head_dim,
    stride_q_tok,
    stride_q_head,
    stride_c_blk,  # k_cache and v_cache share strides
    stride_c_off,
    stride_c_head,
    stride_bt,
    num_splits,  # programs sharing one sequence's context (SPLIT only; a runtime value: one compiled variant)
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    SPLIT: tl.constexpr,
    DECODE: tl.constexpr,  # max_query_len <= 1 (then BLOCK_Q == 1 and num_q_blocks == num_seqs)
    DOT_PRECISION: tl.constexpr,
    HEADS_FIRST: tl.constexpr,  # grid (num_kv_heads, q blocks, splits) instead of (q blocks, num_kv_heads, splits)
    HAS_ORDER: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait(USE_PDL)
    if HEADS_FIRST:
        kv_head = tl.program_id(0)
        pid = tl.program_id(1)
    else:
        pid = tl.program_id(0)
        kv_head = tl.program_id(1)
    split = tl.program_id(2)

    rows = tl.arange(0, BLOCK_M)
    q_off = rows // QUERIES_PER_KV  # [BLOCK_M] token offset inside the q block
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV  # [BLOCK_M] query head of each row
    row_ok = rows < BLOCK_Q * QUERIES_PER_KV
    d = tl.arange(0, HEAD_DIM_P)
    d_ok = d < head_dim

    if pid >= num_q_blocks:
        # Padding programs (only launched without SPLIT): zero rows past query_start_loc[-1].
        tok = (pid - num_q_blocks) * BLOCK_Q + q_off
        pad = row_ok & (tok >= tl.load(query_start_loc_ptr + num_seqs)) & (tok < num_tokens)
        o_ptrs = out_ptr + (tok.to(tl.int64) * num_heads + head)[:, None] * head_dim + d[None, :]
        zeros = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=out_ptr.dtype.element_ty)
        tl.store(o_ptrs, zeros, mask=pad[:, None] & d_ok[None, :])
        return

    if DECODE:  # at most one query token per sequence: program pid owns one sequence, no search
        if HAS_ORDER:
            seq = tl.load(seq_order_ptr + pid)
        else:
            seq = pid
    else:
        seq = _find_seq_idx(query_start_loc_ptr, pid, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    q_block = 0 if DECODE else pid - (q_start // BLOCK_Q + seq)
    if q_block * BLOCK_Q >= query_len:
        return
    context_len = seq_len - query_len

    q_idx = q_block * BLOCK_Q + q_off  # [BLOCK_M] query index inside the sequence
    row_valid = row_ok & (q_idx < query_len)
    tok = (q_start + q_idx).to(tl.int64)  # [BLOCK_M] flat token index
    q_pos = context_len + q_idx  # [BLOCK_M] absolute position; attends to kv positions <= q_pos
    q_ptrs = q_ptr + tok[:, None] * stride_q_tok + head[:, None] * stride_q_head + d[None, :]
    q = tl.load(q_ptrs, mask=row_valid[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, HEAD_DIM_P]

    kv_end = context_len + tl.minimum((q_block + 1) * BLOCK_Q, query_len)  # kv positions [0, kv_end) needed
    num_tiles = tl.cdiv(tl.maximum(kv_end, 0), TILE_N)
    if not SPLIT:
        tile_lo = 0
        tile_hi = num_tiles
    else:
        tiles_per_split = tl.cdiv(num_tiles, num_splits)
        tile_lo = split * tiles_per_split
        tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    n = tl.arange(0, TILE_N)
    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for t in range(tile_lo, tile_hi):
        kv_pos = t * TILE_N + n  # [TILE_N]
        kv_ok = kv_pos < kv_end
        if BLOCK_SIZE >= TILE_N:
            blk = tl.load(bt_row + (t * TILE_N) // BLOCK_SIZE).to(tl.int64)
        else:
            blk = tl.load(bt_row + kv_pos // BLOCK_SIZE, mask=kv_ok, other=0).to(tl.int64)  # [TILE_N]
        slot_off = kv_pos % BLOCK_SIZE
        kv_off = blk * stride_c_blk + slot_off * stride_c_off + kv_head * stride_c_head  # [TILE_N]
        kv_off = kv_off[:, None] + d[None, :]  # [TILE_N, HEAD_DIM_P]
        kv_mask = kv_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)  # [TILE_N, HEAD_DIM_P]
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)  # [TILE_N, HEAD_DIM_P]

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, TILE_N]
        visible = (kv_pos[None, :] <= q_pos[:, None]) & kv_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet stay at zero
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    release(USE_PDL)  # the KV stream is done: the next kernel may launch
    if not SPLIT:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = out_ptr + (tok * num_heads + head)[:, None] * head_dim + d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_ok[None, :])
    else:
        part = (tok * num_heads + head) * num_splits + split  # [BLOCK_M]
        tl.store(part_m_ptr + part, m_i, mask=row_valid)
        tl.store(part_l_ptr + part, l_i, mask=row_valid)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM_P + d[None, :], acc, mask=row_valid[:, None])


@triton.jit(do_not_specialize=["num_seqs", "num_splits"])
def _merge_splits_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim] contiguous
    part_acc_ptr,  # [num_tokens, num_heads, num_splits, HEAD_DIM_P] f32
    part_m_ptr,  # [num_tokens, num_heads, num_splits] f32
    part_l_ptr,  # [num_tokens, num_heads, num_splits] f32
    query_start_loc_ptr,
    num_seqs,
    num_heads,
    head_dim,
    num_splits,
    HEAD_DIM_P: tl.constexpr,
    MAX_SPLITS: tl.constexpr,  # a bound on num_splits (one compiled variant for every split count)
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    s = tl.arange(0, MAX_SPLITS)
    d = tl.arange(0, HEAD_DIM_P)
    part = (tok * num_heads + head) * num_splits + s  # [MAX_SPLITS]
    # Loads ignore the padding check so they overlap it; padding rows' partials are garbage, replaced below.
    valid = tok < tl.load(query_start_loc_ptr + num_seqs)
    used = s < num_splits
    m = tl.load(part_m_ptr + part, mask=used, other=float("-inf"))
    l_s = tl.load(part_l_ptr + part, mask=used, other=0.0)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM_P + d[None, :], mask=used[:, None], other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # [MAX_SPLITS]; empty splits weigh 0
    denom = tl.sum(l_s * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)  # [HEAD_DIM_P]
    out = tl.where(valid, out, 0.0)
    o_ptrs = out_ptr + (tok * num_heads + head) * head_dim + d
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=d < head_dim)


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_NUM_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


class _LaunchConfig(NamedTuple):
    block_m: int  # query rows per program: BLOCK_Q tokens x queries_per_kv heads
    tile_n: int  # KV positions per inner-loop step
    num_splits: int  # programs sharing one sequence's context (decode only)
    num_warps: int
    num_stages: int


def _launch_config(
    query: torch.Tensor,
    num_kv_heads: int,
    num_seqs: int,
    head_dim_p: int,
    max_query_len: int,
    max_seq_len: int,
) -> _LaunchConfig:
    """Tile shapes and split count, from shapes and host ints only (so CUDA graphs replay the same launch).

    Tuned on an H100 (bf16, head_dim 128, GQA 2): decode and decode-heavy mixed batches are memory-bound and
    take 16-row tiles (little wasted tensor-core work on 1-token sequences); prefill-heavy batches take 64 rows.
    """
    num_tokens, queries_per_kv = query.shape[0], query.shape[1] // num_kv_heads
    num_splits = _num_splits(num_seqs, num_kv_heads, max_query_len, max_seq_len, query.device)
    mean_query_len = min(max(1, max_query_len), triton.cdiv(num_tokens, max(1, num_seqs)))
    block_m = 16 if mean_query_len * queries_per_kv <= 32 else 64
    block_m = max(block_m, triton.next_power_of_2(queries_per_kv))
    if head_dim_p > 128:
        return _LaunchConfig(block_m, 32, num_splits, 8 if block_m >= 64 else 4, 2)
    if max_query_len <= 1 and num_splits == 1 and _smem_bytes(query.device) >= _DEEP_DECODE_SMEM:
        # Large decode batches: 128-position tiles, 4 stages (+2.5-4% on an H100, benchmarks/attn_sweep.py).
        return _LaunchConfig(block_m, 128, 1, 4, 4)
    return _LaunchConfig(block_m, 64, num_splits, 4, 2 if max_query_len <= 1 else 3)


@functools.lru_cache(maxsize=8)
def _smem_bytes(device: torch.device) -> int:
    """Shared memory one program may use on ``device`` (0 off CUDA: the interpreter takes the default tiles)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def _num_splits(
    num_seqs: int, num_kv_heads: int, max_query_len: int, max_seq_len: int, device: torch.device
) -> int:
    """Splits of the context per decode sequence: enough programs for ~2 waves, at least MIN_SPLIT_TOKENS each;
    none when no context is longer than UNSPLIT_MAX_SEQ_LEN."""
    if max_query_len != 1 or max_seq_len <= UNSPLIT_MAX_SEQ_LEN:
        return 1
    programs = max(1, num_seqs * num_kv_heads)
    by_occupancy = triton.cdiv(2 * _num_sms(device), programs)
    by_length = triton.cdiv(max_seq_len, MIN_SPLIT_TOKENS)
    splits = min(by_occupancy, by_length, MAX_SPLITS)
    return 1 if splits <= 1 else triton.next_power_of_2(splits)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    seq_order: torch.Tensor | None = None,  # [num_seqs] int32: decode sequences longest first
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    """Causal GQA attention of each query token over its sequence's paged KV cache (which already holds it).

    Query token ``i`` of sequence ``b`` sits at position ``seq_lens[b] - query_len_b + i`` and attends to cached
    positions ``<=`` its own. Rows past ``query_start_loc[-1]`` are zero. ``max_query_len``/``max_seq_len`` may be
    upper bounds (they only pick tile shapes and the split count). Softmax runs in float32. ``seq_order`` (a
    permutation of the sequences, longest first) makes a decode launch start its programs in that order: the GPU
    hands out programs in launch order, so the long ones no longer risk starting last and running alone at the end.
    """
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    _check_cache(k_cache, v_cache, num_kv_heads, head_dim)
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if query.dtype != k_cache.dtype:
        raise ValueError(f"query dtype {query.dtype} must match the KV cache dtype {k_cache.dtype}")
    query = query if query.stride(-1) == 1 else query.contiguous()
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=query.dtype, device=query.device)
    num_seqs = seq_lens.shape[0]
    if seq_order is not None and (
        seq_order.shape != (num_seqs,) or seq_order.dtype != torch.int32 or not seq_order.is_contiguous()
    ):
        raise ValueError(
            f"seq_order must be a contiguous [{num_seqs}] int32 permutation of the sequences; got "
            f"{tuple(seq_order.shape)} {seq_order.dtype}"
        )
    if num_tokens == 0 or num_seqs == 0:
        return out.zero_()

    queries_per_kv = num_heads // num_kv_heads
    head_dim_p = max(16, triton.next_power_of_2(head_dim))
    cfg = _launch_config(query, num_kv_heads, num_seqs, head_dim_p, max_query_len, max_seq_len)
    decode = max_query_len <= 1
    block_q = max(1, min(cfg.block_m // queries_per_kv, max_query_len))
    num_q_blocks = num_seqs if decode else num_tokens // block_q + num_seqs
    num_splits = cfg.num_splits
    heads_first = False

    if num_splits == 1:
        part_acc = part_m = part_l = out  # unused placeholders
        grid = (num_q_blocks + triton.cdiv(num_tokens, block_q), num_kv_heads, 1)
        heads_first = decode and DECODE_HEADS_FIRST
        if heads_first:
            grid = (num_kv_heads, grid[0], 1)
    else:
        part_m = torch.empty((num_tokens, num_heads, num_splits), dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty(
            (num_tokens, num_heads, num_splits, head_dim_p), dtype=torch.float32, device=query.device
        )
        grid = (num_q_blocks, num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        out,
        part_acc,
        part_m,
        part_l,
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        seq_lens if seq_order is None else seq_order,  # unread placeholder without an order
        scale * LOG2E,
        num_seqs,
        num_tokens,
        num_q_blocks,
        num_heads,
        head_dim,
        *query.stride()[:2],
        *k_cache.stride()[:3],
        block_tables.stride(0),
        num_splits,
        QUERIES_PER_KV=queries_per_kv,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_M=cfg.block_m,
        BLOCK_Q=block_q,
        TILE_N=cfg.tile_n,
        HEAD_DIM_P=head_dim_p,
        SPLIT=num_splits > 1,
        DECODE=decode,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        HEADS_FIRST=heads_first,
        HAS_ORDER=decode and seq_order is not None,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **pdl.launch_kwargs(query.device),
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens, num_heads)](
            out,
            part_acc,
            part_m,
            part_l,
            query_start_loc,
            num_seqs,
            num_heads,
            head_dim,
            num_splits,
            HEAD_DIM_P=head_dim_p,
            MAX_SPLITS=MAX_SPLITS,
            num_warps=4,
            **pdl.launch_kwargs(query.device),
        )
    return out


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, head_dim]; got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.shape[2] != num_kv_heads or k_cache.shape[3] != head_dim:
        raise ValueError(
            f"KV cache heads/head_dim {tuple(k_cache.shape[2:])} do not match the inputs ({num_kv_heads}, {head_dim})"
        )
    block_size = k_cache.shape[1]
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two for the Triton backend; got {block_size}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError(
            "k_cache and v_cache need equal strides, contiguous in head_dim (allocate with torch.empty)"
        )
