"""Triton elementwise kernels: RMSNorm (optionally fused with the residual add), SiLU-and-mul, rotary embedding,
and the decode-step advance of the runner's input buffers.

Same signatures and contracts as ``inferd.kernels.reference``. Each kernel makes one pass over memory with float32
math and rounds once to the output dtype; inputs may be row-strided views (e.g. slices of a fused projection) as
long as the last dimension is contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.reference import _check_decode_advance
from inferd.kernels.triton_pdl import wait_and_release

_TILE_ELEMS = 4096  # elements per program for the row-wise kernels
_ADVANCE_BLOCK = 256  # sequences per program of decode_advance


@triton.jit(do_not_specialize=["n_rows"])
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    res_out_ptr,
    n_rows,
    n_inner,
    n_cols,
    stride_x0,
    stride_x1,
    stride_r0,
    stride_r1,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] flat row over [A, B]
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    outer = rows // n_inner
    inner = rows % n_inner
    x_off = (outer * stride_x0 + inner * stride_x1)[:, None] + cols[None, :]
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_R, BLOCK_C]
    o_off = rows[:, None] * n_cols + cols[None, :]  # outputs are contiguous
    if HAS_RESIDUAL:
        r_off = (outer * stride_r0 + inner * stride_r1)[:, None] + cols[None, :]
        r = tl.load(res_ptr + r_off, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + o_off, summed, mask=mask)
        x = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / n_cols + eps)  # [BLOCK_R]
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(out_ptr + o_off, y.to(out_ptr.dtype.element_ty), mask=mask)


def _as_3d(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` [..., H] as [A, B, H] without copying when its strides allow it; contiguous last dim."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 1:
        return x.view(1, 1, -1)
    return x.reshape(-1, 1, x.shape[-1])


def _launch_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = x.shape[-1]
    if weight.shape != (hidden,):
        raise ValueError(
            f"weight must have shape ({hidden},) to match x's last dim; got {tuple(weight.shape)}"
        )
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} must equal x's shape {tuple(x.shape)}")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    x3 = _as_3d(x)
    r3 = _as_3d(residual) if residual is not None else x3
    n_rows = x3.shape[0] * x3.shape[1]
    if n_rows == 0:
        return out, res_out
    block_c = triton.next_power_of_2(hidden)
    # Rows per program from the width alone (not the row count): one compiled variant serves every batch size,
    # which keeps first-start compilation short; a partial last tile is masked.
    block_r = max(1, _TILE_ELEMS // block_c)
    _rms_norm_kernel[(triton.cdiv(n_rows, block_r),)](
        x3,
        r3,
        weight,
        out,
        res_out if res_out is not None else out,
        n_rows,
        x3.shape[1],
        hidden,
        x3.stride(0),
        x3.stride(1),
        r3.stride(0),
        r3.stride(1),
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=8 if block_r * block_c >= 4096 else 4,
        **pdl.launch_kwargs(x.device),
    )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x**2, -1) + eps) * weight`` over the last dim of ``x`` [T, H] (any leading dims), in float32;
    returns a new tensor of ``x``'s shape and dtype."""
    out, _ = _launch_rms_norm(x, None, weight, eps)
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual) * weight, x + residual)`` as new tensors in one pass; the sum is rounded to
    ``x.dtype`` before the norm (as a separate add would do). Inputs are not modified."""
    out, res_out = _launch_rms_norm(x, residual, weight, eps)
    assert res_out is not None
    return out, res_out


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, inter, stride_x, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_and_release(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * inter + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for ``x`` [T, 2I]; returns a new [T, I] tensor of ``x``'s dtype."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul needs an even last dim (gate and up halves); got {x.shape[-1]}")
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    x2 = x.reshape(-1, x.shape[-1])  # [T, 2I]
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    if x2.shape[0] == 0 or inter == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    grid = (x2.shape[0], triton.cdiv(inter, block))
    _silu_and_mul_kernel[grid](
        x2, out, inter, x2.stride(0), BLOCK=block, num_warps=4, **pdl.launch_kwargs(x.device)
    )
    return out


@triton.jit
def _rotate_heads(
    base_ptr, stride_head, num_heads, cos, sin, idx1, idx2, i_ok, BLOCK_H: tl.constexpr
):  # rotates (x1, x2) pairs of every head of one token in place
    h = tl.arange(0, BLOCK_H)
    mask = (h < num_heads)[:, None] & i_ok[None, :]
    p1 = base_ptr + h[:, None] * stride_head + idx1[None, :]
    p2 = base_ptr + h[:, None] * stride_head + idx2[None, :]
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_HALF]
    x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(p1, o1.to(base_ptr.dtype.element_ty), mask=mask)
    tl.store(p2, o2.to(base_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pair_indices(HALF: tl.constexpr, IS_NEOX: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Dims (idx1, idx2) [BLOCK_HALF] rotated together (neox: the two halves; GPT-J: even/odd), and their mask."""
    i = tl.arange(0, BLOCK_HALF)
    if IS_NEOX:
        idx1 = i
        idx2 = i + HALF
    else:
        idx1 = 2 * i
        idx2 = 2 * i + 1
    return idx1, idx2, i < HALF


@triton.jit
def _rotary_kernel(
    positions_ptr,
    q_ptr,
    k_ptr,
    cos_sin_ptr,
    num_q_heads,
    num_k_heads,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_cs,
    HALF: tl.constexpr,
    IS_NEOX: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    idx1, idx2, i_ok = _pair_indices(HALF, IS_NEOX, BLOCK_HALF)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + i, mask=i_ok, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + i, mask=i_ok, other=0.0).to(tl.float32)
    _rotate_heads(
        q_ptr + tok * stride_q_tok, stride_q_head, num_q_heads, cos, sin, idx1, idx2, i_ok, BLOCK_HQ
    )
    _rotate_heads(
        k_ptr + tok * stride_k_tok, stride_k_head, num_k_heads, cos, sin, idx1, idx2, i_ok, BLOCK_HK
    )


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    cos_sin_cache: torch.Tensor,  # [max_position, rot_dim] float32: cos | sin
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``rot_dim`` dims of every head by the angle of each token's position (neox: halves;
    otherwise interleaved pairs). Works in place on ``query`` and ``key`` and returns them."""
    num_tokens, num_q_heads, head_dim = query.shape
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or rot_dim > head_dim:
        raise ValueError(f"cos_sin_cache width {rot_dim} must be even and at most head_dim ({head_dim})")
    if key.shape[0] != num_tokens or key.shape[2] != head_dim:
        raise ValueError(f"key shape {tuple(key.shape)} must be [{num_tokens}, num_kv_heads, {head_dim}]")
    if query.stride(-1) != 1 or key.stride(-1) != 1 or cos_sin_cache.stride(-1) != 1:
        raise ValueError(
            "rotary_embedding works in place: query, key and cos_sin_cache need a contiguous last dim"
        )
    if num_tokens == 0:
        return query, key
    half = rot_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions,
        query,
        key,
        cos_sin_cache,
        num_q_heads,
        key.shape[1],
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        cos_sin_cache.stride(0),
        HALF=half,
        IS_NEOX=is_neox,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(key.shape[1]),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
    return query, key


@triton.jit(do_not_specialize=["n"])
def _decode_advance_kernel(
    input_ids_ptr,
    positions_ptr,
    seq_lens_ptr,
    slot_ptr,
    next_ids_ptr,
    next_slots_ptr,
    n,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    tl.store(input_ids_ptr + i, tl.load(next_ids_ptr + i, mask=mask), mask=mask)
    tl.store(slot_ptr + i, tl.load(next_slots_ptr + i, mask=mask), mask=mask)
    tl.store(positions_ptr + i, tl.load(positions_ptr + i, mask=mask) + 1, mask=mask)
    tl.store(seq_lens_ptr + i, tl.load(seq_lens_ptr + i, mask=mask) + 1, mask=mask)


def decode_advance(
    input_ids: torch.Tensor,  # [>= n] int64
    positions: torch.Tensor,  # [>= n] int64
    seq_lens: torch.Tensor,  # [>= n] int32
    slot_mapping: torch.Tensor,  # [>= n] int64
    next_ids: torch.Tensor,  # [n] int64
    next_slots: torch.Tensor,  # [n] int64
) -> None:
    """In place, for i < n: ``input_ids[i] = next_ids[i]``, ``slot_mapping[i] = next_slots[i]``, ``positions[i]``
    and ``seq_lens[i]`` one further; one kernel instead of four. ``n`` is not specialized: one compiled variant
    serves every batch size."""
    n = _check_decode_advance(input_ids, positions, seq_lens, slot_mapping, next_ids, next_slots)
    if n == 0:
        return
    _decode_advance_kernel[(triton.cdiv(n, _ADVANCE_BLOCK),)](
        input_ids,
        positions,
        seq_lens,
        slot_mapping,
        next_ids.contiguous(),
        next_slots.contiguous(),
        n,
        BLOCK=_ADVANCE_BLOCK,
        num_warps=4,
        **pdl.launch_kwargs(input_ids.device),
    )
