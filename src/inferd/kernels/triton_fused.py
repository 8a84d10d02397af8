"""Triton attention prologue: per-head q/k RMSNorm, rotary embedding and the KV-cache write in one launch.

Same signature and contract as ``inferd.kernels.reference.qk_norm_rope_store``. It replaces the separate
``rms_norm`` (q), ``rms_norm`` (k), ``rotary_embedding`` and ``store_kv_cache`` launches (and the copies that
reshaping the strided q/k slices of the fused projection made) of a decoder layer.

Layout: below ``TILED_MIN_TOKENS`` tokens (decode), one program per (token, head) over the ``num_heads`` query heads
and ``num_kv_heads`` key heads, of 1-2 warps; a key program also copies the matching value head. From
``TILED_MIN_TOKENS`` on (prefill), that would be hundreds of thousands of tiny programs (8,192 tokens of Qwen3-0.6B:
196,608, profiled at ~116 us per call on an H100 for ~40 us of HBM traffic), so the tiled launch lays the heads out
as flat rows (token, head), token-major, and a program of 4 warps takes ``_TILE_ELEMS // head_dim`` consecutive rows
(16 heads of 128 dims) as a [rows, head_dim] tile: query programs first (their rows are q's output rows, so stores
are one contiguous run), then key/value programs (each row a key head and its value head). Rows span tokens, so any
head count fills whole tiles; loads and stores stay contiguous along head_dim (16-byte vectors) and a program moves
4 KB (query) or 8 KB (key and value) each way at head_dim 128 in bf16. Both launches run the same math: each head is
read once as its two rotary halves (``x1``, ``x2``: the two halves for neox, even/odd dims for GPT-J) plus the dims
past ``rot_dim``, normed in float32 and rounded to the model dtype (as the separate norm kernel stores it), rotated
in float32 and rounded once more, exactly the rounding order of the unfused kernels (only the order of the float32
sum of squares may differ between the launches' reductions). The launch is CUDA-graph capturable: the launch and its
grid come from shapes only and padding rows (slot < 0) are skipped on the device (their q rows are written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.reference import _check_qkv_shapes
from inferd.kernels.triton_attention import _check_cache
from inferd.kernels.triton_ops import _pair_indices
from inferd.kernels.triton_pdl import wait_and_release

TILED_MIN_TOKENS = 128  # from this many tokens on the tiled launch (below it a program per (token, head))
# Elements (heads x head_dim) per program of the tiled launch: 16 heads of 128 dims. H100, Qwen3-0.6B shape
# (benchmarks/qk_prologue_bench.py, results/run-s8-3): 8,192 tokens 121 us per (token, head) program -> 51.5 us
# (53 / 56 us with 4096 / 8192 elements); 128 tokens 3.4 -> 2.6 us, 2,048 tokens 31.7 -> 9.5 us.
_TILE_ELEMS = 2048


@triton.jit
def _norm_rope_head(
    x_ptr,  # one head [HEAD_DIM] of a qkv row
    w_ptr,  # [HEAD_DIM] norm weight (unused without HAS_NORM)
    cs_ptr,  # this token's cos_sin_cache row: cos [HALF] | sin [HALF]
    eps,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_PASS: tl.constexpr,  # 2 * HALF < HEAD_DIM: dims past rot_dim pass through (normed, not rotated)
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    """Returns the head's rotated pairs (o1, o2) [BLOCK_HALF] and its dims past rot_dim [BLOCK_PASS], in x's dtype."""
    dt = x_ptr.dtype.element_ty
    idx1, idx2, i_ok = _pair_indices(HALF, IS_NEOX, BLOCK_HALF)
    i = tl.arange(0, BLOCK_HALF)
    p = 2 * HALF + tl.arange(0, BLOCK_PASS)
    p_ok = p < HEAD_DIM
    x1 = tl.load(x_ptr + idx1, mask=i_ok, other=0.0).to(tl.float32)  # [BLOCK_HALF]
    x2 = tl.load(x_ptr + idx2, mask=i_ok, other=0.0).to(tl.float32)
    if HAS_PASS:
        xp = tl.load(x_ptr + p, mask=p_ok, other=0.0).to(tl.float32)  # [BLOCK_PASS]
    else:
        xp = tl.zeros((BLOCK_PASS,), dtype=tl.float32)
    cos = tl.load(cs_ptr + i, mask=i_ok, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + HALF + i, mask=i_ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        w1 = tl.load(w_ptr + idx1, mask=i_ok, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + idx2, mask=i_ok, other=0.0).to(tl.float32)
        sum_sq = tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)
        if HAS_PASS:
            sum_sq += tl.sum(xp * xp, 0)
        rstd = tl.rsqrt(sum_sq / HEAD_DIM + eps)
        x1 = (x1 * rstd * w1).to(dt).to(tl.float32)  # rounded as the separate rms_norm kernel stores it
        x2 = (x2 * rstd * w2).to(dt).to(tl.float32)
        if HAS_PASS:
            wp = tl.load(w_ptr + p, mask=p_ok, other=0.0).to(tl.float32)
            xp = xp * rstd * wp
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return o1.to(dt), o2.to(dt), xp.to(dt)


@triton.jit
def _store_head(
    dst_ptr,  # one head [HEAD_DIM] of the output
    o1,  # [BLOCK_HALF]
    o2,
    op,  # [BLOCK_PASS]
    slot,  # scalar: nothing is stored when < 0 (padding)
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    idx1, idx2, i_ok = _pair_indices(HALF, IS_NEOX, BLOCK_HALF)
    dt = dst_ptr.dtype.element_ty
    i_ok = i_ok & (idx1 * 0 + slot >= 0)  # the slot test as a vector (the interpreter mis-broadcasts scalars)
    tl.store(dst_ptr + idx1, o1.to(dt), mask=i_ok)
    tl.store(dst_ptr + idx2, o2.to(dt), mask=i_ok)
    if HAS_PASS:
        p = 2 * HALF + tl.arange(0, BLOCK_PASS)
        tl.store(dst_ptr + p, op.to(dt), mask=(p < HEAD_DIM) & (p * 0 + slot >= 0))


@triton.jit
def _qk_norm_rope_store_kernel(
    qkv_ptr,  # [num_tokens, (num_heads + 2 * num_kv_heads) * HEAD_DIM], unit stride in the last dim
    positions_ptr,  # [num_tokens]
    cos_sin_ptr,  # [max_position, 2 * HALF] float32
    q_w_ptr,  # [HEAD_DIM]
    k_w_ptr,  # [HEAD_DIM]
    q_out_ptr,  # [num_tokens, num_heads * HEAD_DIM] contiguous
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]
    v_cache_ptr,
    slot_mapping_ptr,  # [num_tokens]
    eps,
    num_heads,
    num_kv_heads,
    stride_qkv,
    stride_cs,
    stride_c_blk,  # k_cache and v_cache share strides
    stride_c_off,
    stride_c_head,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_Q_NORM: tl.constexpr,
    HAS_K_NORM: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)  # query heads, then key heads
    row_ptr = qkv_ptr + tok * stride_qkv
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    cs_ptr = cos_sin_ptr + pos * stride_cs
    if head < num_heads:
        o1, o2, op = _norm_rope_head(
            row_ptr + head * HEAD_DIM,
            q_w_ptr,
            cs_ptr,
            eps,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_Q_NORM,
            HAS_PASS,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        dst = q_out_ptr + tok * num_heads * HEAD_DIM + head * HEAD_DIM
        _store_head(dst, o1, o2, op, 0, HEAD_DIM, HALF, IS_NEOX, HAS_PASS, BLOCK_HALF, BLOCK_PASS)
    else:
        # Loads are not predicated on the slot (all in flight at once); padding rows' stores are masked off.
        kv_head = head - num_heads
        slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
        o1, o2, op = _norm_rope_head(
            row_ptr + (num_heads + kv_head) * HEAD_DIM,
            k_w_ptr,
            cs_ptr,
            eps,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_K_NORM,
            HAS_PASS,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        v = tl.load(row_ptr + (num_heads + num_kv_heads + kv_head) * HEAD_DIM + d, mask=d_ok)
        safe_slot = tl.maximum(slot, 0)  # padding rows (slot < 0) compute in-bounds addresses, store nothing
        cache_off = (safe_slot // BLOCK_SIZE) * stride_c_blk + (safe_slot % BLOCK_SIZE) * stride_c_off
        cache_off += kv_head * stride_c_head
        _store_head(
            k_cache_ptr + cache_off,
            o1,
            o2,
            op,
            slot,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_PASS,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        tl.store(
            v_cache_ptr + cache_off + d, v.to(v_cache_ptr.dtype.element_ty), mask=d_ok & (d * 0 + slot >= 0)
        )


@triton.jit
def _norm_rope_tile(
    x_ptr,
    x_off,  # [BLOCK_R] int64: each row's head start in x
    w_ptr,  # [HEAD_DIM] norm weight (unused without HAS_NORM)
    cs_ptr,
    cs_off,  # [BLOCK_R] int64: each row's cos_sin_cache row (cos [HALF] | sin [HALF])
    row_ok,  # [BLOCK_R]
    eps,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_NORM: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    """:func:`_norm_rope_head` on BLOCK_R heads at once: (o1, o2) [BLOCK_R, BLOCK_HALF], dims past rot_dim
    [BLOCK_R, BLOCK_PASS], in x's dtype; the same float32 math and roundings, a head per tile row."""
    dt = x_ptr.dtype.element_ty
    idx1, idx2, i_ok = _pair_indices(HALF, IS_NEOX, BLOCK_HALF)
    i = tl.arange(0, BLOCK_HALF)
    p = 2 * HALF + tl.arange(0, BLOCK_PASS)
    mask = row_ok[:, None] & i_ok[None, :]
    p_mask = row_ok[:, None] & (p < HEAD_DIM)[None, :]
    x_row = x_ptr + x_off[:, None]
    x1 = tl.load(x_row + idx1[None, :], mask=mask, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_HALF]
    x2 = tl.load(x_row + idx2[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_PASS:
        xp = tl.load(x_row + p[None, :], mask=p_mask, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_PASS]
    else:
        xp = tl.zeros((BLOCK_R, BLOCK_PASS), dtype=tl.float32)
    cs_row = cs_ptr + cs_off[:, None]
    cos = tl.load(cs_row + i[None, :], mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(cs_row + HALF + i[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        w1 = tl.load(w_ptr + idx1, mask=i_ok, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + idx2, mask=i_ok, other=0.0).to(tl.float32)[None, :]
        sum_sq = tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)
        if HAS_PASS:
            sum_sq += tl.sum(xp * xp, 1)
        rstd = tl.rsqrt(sum_sq / HEAD_DIM + eps)[:, None]
        x1 = (x1 * rstd * w1).to(dt).to(tl.float32)  # rounded as the separate rms_norm kernel stores it
        x2 = (x2 * rstd * w2).to(dt).to(tl.float32)
        if HAS_PASS:
            wp = tl.load(w_ptr + p, mask=p < HEAD_DIM, other=0.0).to(tl.float32)[None, :]
            xp = xp * rstd * wp
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return o1.to(dt), o2.to(dt), xp.to(dt)


@triton.jit
def _store_tile(
    dst_ptr,
    dst_off,  # [BLOCK_R] int64: each row's head start in dst
    o1,  # [BLOCK_R, BLOCK_HALF]
    o2,
    op,  # [BLOCK_R, BLOCK_PASS]
    row_ok,  # [BLOCK_R]: rows stored (in range and, for the cache, not padding)
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    idx1, idx2, i_ok = _pair_indices(HALF, IS_NEOX, BLOCK_HALF)
    dt = dst_ptr.dtype.element_ty
    mask = row_ok[:, None] & i_ok[None, :]
    dst_row = dst_ptr + dst_off[:, None]
    tl.store(dst_row + idx1[None, :], o1.to(dt), mask=mask)
    tl.store(dst_row + idx2[None, :], o2.to(dt), mask=mask)
    if HAS_PASS:
        p = 2 * HALF + tl.arange(0, BLOCK_PASS)
        tl.store(dst_row + p[None, :], op.to(dt), mask=row_ok[:, None] & (p < HEAD_DIM)[None, :])


@triton.jit(do_not_specialize=["num_tokens", "num_q_programs"])
def _qk_norm_rope_store_tiled_kernel(
    qkv_ptr,  # [num_tokens, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM], unit stride in the last dim
    positions_ptr,  # [num_tokens]
    cos_sin_ptr,  # [max_position, 2 * HALF] float32
    q_w_ptr,  # [HEAD_DIM]
    k_w_ptr,  # [HEAD_DIM]
    q_out_ptr,  # [num_tokens, NUM_HEADS * HEAD_DIM] contiguous
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    v_cache_ptr,
    slot_mapping_ptr,  # [num_tokens]
    eps,
    num_tokens,
    num_q_programs,  # programs [0, num_q_programs) take query rows, the rest key/value rows
    stride_qkv,
    stride_cs,
    stride_c_blk,  # k_cache and v_cache share strides
    stride_c_off,
    stride_c_head,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    HAS_Q_NORM: tl.constexpr,
    HAS_K_NORM: tl.constexpr,
    HAS_PASS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """The tiled (many-token) launch: a program takes BLOCK_R consecutive rows of the flat token-major (token,
    head) order, of the query rows (``num_tokens * NUM_HEADS``) or of the key/value rows (``num_tokens *
    NUM_KV_HEADS``); rows past the end are masked off."""
    wait_and_release(USE_PDL)
    pid = tl.program_id(0)
    if pid < num_q_programs:
        row = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # token-major, as q_out's rows: stores are contiguous
        row_ok = row < num_tokens * NUM_HEADS
        tok = (row // NUM_HEADS).to(tl.int64)
        head = row % NUM_HEADS
        pos = tl.load(positions_ptr + tok, mask=row_ok, other=0).to(tl.int64)
        o1, o2, op = _norm_rope_tile(
            qkv_ptr,
            tok * stride_qkv + head * HEAD_DIM,
            q_w_ptr,
            cos_sin_ptr,
            pos * stride_cs,
            row_ok,
            eps,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_Q_NORM,
            HAS_PASS,
            BLOCK_R,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        q_off = row.to(tl.int64) * HEAD_DIM
        _store_tile(
            q_out_ptr, q_off, o1, o2, op, row_ok, HEAD_DIM, HALF, IS_NEOX, HAS_PASS, BLOCK_HALF, BLOCK_PASS
        )
    else:
        row = (pid - num_q_programs) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = row < num_tokens * NUM_KV_HEADS
        tok = (row // NUM_KV_HEADS).to(tl.int64)
        kv_head = row % NUM_KV_HEADS
        pos = tl.load(positions_ptr + tok, mask=row_ok, other=0).to(tl.int64)
        slot = tl.load(slot_mapping_ptr + tok, mask=row_ok, other=-1).to(tl.int64)
        # Loads are not predicated on the slot (all in flight at once); padding rows' stores are masked off.
        k_off = tok * stride_qkv + (NUM_HEADS + kv_head) * HEAD_DIM
        o1, o2, op = _norm_rope_tile(
            qkv_ptr,
            k_off,
            k_w_ptr,
            cos_sin_ptr,
            pos * stride_cs,
            row_ok,
            eps,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_K_NORM,
            HAS_PASS,
            BLOCK_R,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        d = tl.arange(0, BLOCK_D)
        v_mask = row_ok[:, None] & (d < HEAD_DIM)[None, :]
        v = tl.load(qkv_ptr + (k_off + NUM_KV_HEADS * HEAD_DIM)[:, None] + d[None, :], mask=v_mask)
        safe_slot = tl.maximum(slot, 0)  # padding rows (slot < 0) compute in-bounds addresses, store nothing
        cache_off = (safe_slot // BLOCK_SIZE) * stride_c_blk + (safe_slot % BLOCK_SIZE) * stride_c_off
        cache_off += kv_head * stride_c_head
        store_ok = row_ok & (slot >= 0)
        _store_tile(
            k_cache_ptr,
            cache_off,
            o1,
            o2,
            op,
            store_ok,
            HEAD_DIM,
            HALF,
            IS_NEOX,
            HAS_PASS,
            BLOCK_HALF,
            BLOCK_PASS,
        )
        tl.store(
            v_cache_ptr + cache_off[:, None] + d[None, :],
            v.to(v_cache_ptr.dtype.element_ty),
            mask=store_ok[:, None] & (d < HEAD_DIM)[None, :],
        )


def qk_norm_rope_store(
    qkv: torch.Tensor,  # [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim]
    positions: torch.Tensor,  # [num_tokens] int64
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim] float32: cos | sin
    q_norm_weight: torch.Tensor | None,  # [head_dim]
    k_norm_weight: torch.Tensor | None,  # [head_dim]
    eps: float,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    is_neox: bool = True,
) -> torch.Tensor:
    """Norm (optional) and rotate q and k, write k and v to their cache slots (slots < 0 skipped) in one launch;
    returns a new q [num_tokens, num_heads * head_dim] of ``qkv``'s dtype. ``qkv`` is not modified and may be
    row-strided as long as its last dim is contiguous. Launches a program per (token, head) below
    ``TILED_MIN_TOKENS`` tokens, tiles of heads from there on (see the module docstring)."""
    _check_qkv_shapes(qkv, positions, slot_mapping, num_heads, num_kv_heads, head_dim)
    _check_cache(k_cache, v_cache, num_kv_heads, head_dim)
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > head_dim or rot_dim == 0:
        raise ValueError(
            f"cos_sin_cache width {rot_dim} must be even, positive and at most head_dim ({head_dim})"
        )
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None and w.shape != (head_dim,):
            raise ValueError(f"{name} must have shape ({head_dim},); got {tuple(w.shape)}")
    num_tokens = qkv.shape[0]
    q = torch.empty((num_tokens, num_heads * head_dim), dtype=qkv.dtype, device=qkv.device)
    if num_tokens == 0:
        return q
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    cos_sin_cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    q_w = q_norm_weight.contiguous() if q_norm_weight is not None else qkv  # placeholder when unused
    k_w = k_norm_weight.contiguous() if k_norm_weight is not None else qkv
    half = rot_dim // 2
    block_half = triton.next_power_of_2(half)
    block_d = triton.next_power_of_2(head_dim)
    common = {
        "HEAD_DIM": head_dim,
        "HALF": half,
        "IS_NEOX": is_neox,
        "HAS_Q_NORM": q_norm_weight is not None,
        "HAS_K_NORM": k_norm_weight is not None,
        "HAS_PASS": rot_dim < head_dim,
        "BLOCK_SIZE": k_cache.shape[1],
        "BLOCK_HALF": block_half,
        "BLOCK_PASS": triton.next_power_of_2(max(1, head_dim - rot_dim)),
        "BLOCK_D": block_d,
        **pdl.launch_kwargs(qkv.device),
    }
    args = (qkv, positions, cos_sin_cache, q_w, k_w, q, k_cache, v_cache, slot_mapping, eps)
    strides = (qkv.stride(0), cos_sin_cache.stride(0), *k_cache.stride()[:3])
    if num_tokens < TILED_MIN_TOKENS:
        _qk_norm_rope_store_kernel[(num_tokens, num_heads + num_kv_heads)](
            *args,
            num_heads,
            num_kv_heads,
            *strides,
            **common,
            num_warps=1 if block_half <= 64 else 2,
        )
        return q
    # Rows (heads) per program from head_dim alone, so one compiled variant serves every token count.
    block_r = max(1, _TILE_ELEMS // block_d)
    num_q_programs = triton.cdiv(num_tokens * num_heads, block_r)
    _qk_norm_rope_store_tiled_kernel[(num_q_programs + triton.cdiv(num_tokens * num_kv_heads, block_r),)](
        *args,
        num_tokens,
        num_q_programs,
        *strides,
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        BLOCK_R=block_r,
        **common,
        num_warps=4,
    )
    return q
