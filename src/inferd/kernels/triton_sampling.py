"""Triton exponential-race sampling for rows with temperature only (no top-k / top-p / min-p).

Same contract as ``inferd.kernels.reference.temperature_race_sample``: ``argmax_v(logits[b, v] / T[b] −
log(max(q[b, v], tiny)))``, i.e. ``argmax(softmax(logits / T) / q)`` without materialising the softmax. One pass
over ``logits`` and ``q`` (the PyTorch sequence makes about ten); the vocabulary is split across programs and the
per-split winners are reduced on the device, so there is no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.triton_pdl import wait_and_release

_BLOCK_V = 2048
_TINY = float(torch.finfo(torch.float32).tiny)


@triton.jit(do_not_specialize=["n_rows"])
def _race_kernel(
    logits_ptr,
    q_ptr,
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
    BLOCK_V: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    inv_t = 1.0 / tl.load(temp_ptr + row).to(tl.float32)
    start = split * cols_per_split
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK_V], tl.int32)
    for off in range(0, cols_per_split, BLOCK_V):
        cols = start + off + tl.arange(0, BLOCK_V)
        mask = (cols < vocab) & (cols < start + cols_per_split)
        lg = tl.load(logits_ptr + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32)
        q = tl.load(q_ptr + row * stride_q + cols, mask=mask, other=1.0).to(tl.float32)
        score = lg * inv_t - tl.log(tl.maximum(q, tiny))
        score = tl.where(mask, score, float("-inf"))
        take = score > best
        best = tl.where(take, score, best)
        best_i = tl.where(take, cols, best_i)
    val = tl.max(best, 0)
    # Lowest index among equal maxima, as torch.argmax picks the first.
    idx = tl.min(tl.where(best == val, best_i, 2147483647), 0)
    tl.store(best_val_ptr + row * n_splits + split, val)
    tl.store(best_idx_ptr + row * n_splits + split, idx)


def temperature_race_sample(logits: torch.Tensor, temperature: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float, temperature [B] (> 0), q [B, V] Exp(1) draws → token ids [B] int64."""
    n_rows, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    n_sm = torch.cuda.get_device_properties(logits.device).multi_processor_count if logits.is_cuda else 8
    target_splits = max(1, (4 * n_sm + n_rows - 1) // max(n_rows, 1))
    n_splits = max(1, min(target_splits, triton.cdiv(vocab, _BLOCK_V)))
    cols_per_split = triton.cdiv(triton.cdiv(vocab, n_splits), _BLOCK_V) * _BLOCK_V
    n_splits = triton.cdiv(vocab, cols_per_split)
    best_val = torch.empty((n_rows, n_splits), dtype=torch.float32, device=logits.device)
    best_idx = torch.empty((n_rows, n_splits), dtype=torch.int32, device=logits.device)
    _race_kernel[(n_rows, n_splits)](
        logits,
        q,
        temperature,
        best_val,
        best_idx,
        n_rows,
        vocab,
        logits.stride(0),
        q.stride(0),
        cols_per_split,
        n_splits,
        _TINY,
        BLOCK_V=_BLOCK_V,
        num_warps=8,
        **pdl.launch_kwargs(logits.device),
    )
    winner = best_val.argmax(dim=1, keepdim=True)  # [B, 1]: first split holding the maximum
    return best_idx.gather(1, winner).squeeze(1).to(torch.int64)
