"""Triton attention prologue: per-head q/k RMSNorm, rotary embedding and the KV-cache write in one launch.

Same signature and contract as ``inferd.kernels.reference.qk_norm_rope_store``. It replaces the separate
``rms_norm`` (q), ``rms_norm`` (k), ``rotary_embedding`` and ``store_kv_cache`` launches (and the copies that
reshaping the strided q/k slices of the fused projection made) of a decoder layer.

Layout: one program per (token, head) over the ``num_heads`` query heads and ``num_kv_heads`` key heads; a key
program also copies the matching value head. Each head is read once as its two rotary halves (``x1``, ``x2``: the
two halves for neox, even/odd dims for GPT-J) plus the dims past ``rot_dim``, normed in float32 and rounded to the
model dtype (as the separate norm kernel stores it), rotated in float32 and rounded once more, exactly the
rounding order of the unfused kernels. The launch is CUDA-graph capturable: the grid comes from shapes only and
padding rows (slot < 0) are skipped on the device.
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
    row-strided as long as its last dim is contiguous."""
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
    _qk_norm_rope_store_kernel[(num_tokens, num_heads + num_kv_heads)](
        qkv,
        positions,
        cos_sin_cache,
        q_w,
        k_w,
        q,
        k_cache,
        v_cache,
        slot_mapping,
        eps,
        num_heads,
        num_kv_heads,
        qkv.stride(0),
        cos_sin_cache.stride(0),
        *k_cache.stride()[:3],
        HEAD_DIM=head_dim,
        HALF=half,
        IS_NEOX=is_neox,
        HAS_Q_NORM=q_norm_weight is not None,
        HAS_K_NORM=k_norm_weight is not None,
        HAS_PASS=rot_dim < head_dim,
        BLOCK_SIZE=k_cache.shape[1],
        BLOCK_HALF=block_half,
        BLOCK_PASS=triton.next_power_of_2(max(1, head_dim - rot_dim)),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=1 if block_half <= 64 else 2,
        **pdl.launch_kwargs(qkv.device),
    )
    return q
