"""Tensor-parallel all-reduce fused with the residual add and RMSNorm that follow it, in one Triton kernel.

A decoder layer's row-parallel projections (attention output, MLP down) end in an all-reduce whose result goes
straight into ``fused_add_rms_norm``. This kernel does both for the small batches of decode: one program per token
row pushes the row of this rank's partial sum into every peer's inbox over NVLink, then sums the rows of all ranks in
rank order (the same bits on every rank), rounds the sum to the activation dtype as an all-reduce would, adds the
residual, rounds again, and writes the RMS-normed row and the new residual. One kernel and one cross-GPU handshake
instead of the one-shot all-reduce's two barriers plus a separate norm kernel.

Memory: every rank owns a symmetric-memory region (mapped on all ranks) holding two inboxes per source rank
(``[2, world, inbox_elems]`` elements: even and odd calls alternate) and a flag per (source rank, row)
(``int32 [world, FLAG_ROWS]``, zero at start), plus a local ``int32 [FLAG_ROWS]`` count of the calls each row has
taken part in. All ranks make the same calls with the same rows, so a row's count (its epoch ``e``) is the same on
every rank. The protocol per row, with no barrier at the end and nothing to reset between calls or CUDA-graph replays:

- sender: write the row into every peer's inbox ``(e & 1, sender)``, then set the peer's flag for (sender, row) to
  ``e`` (system-scope release);
- receiver: wait until its flag for (source, row) reads ``e`` or ``e + 1`` (system-scope acquire), then read inbox
  ``(e & 1, source)`` bypassing L1.

An inbox is written again two epochs later, by a sender that has by then seen the receiver's row of the epoch in
between, which the receiver sends only after finishing the call that read the inbox (kernels on one stream run in
order): so no row is overwritten before it is read. For the same reason a flag is at most one epoch ahead of its
reader: ``e + 1`` when the sender already finished epoch ``e`` (it had the receiver's row) and pushed its next row,
into the other inbox. Counts are int32 and wrap around; only differences are compared.

The wrapper that owns the buffers is ``inferd.distributed.custom_all_reduce.CustomAllReduce``; the result equals
``fused_add_rms_norm(all_reduce(x), residual, weight, eps)`` (``kernels/reference.py``) with the all-reduce summing
the ranks' float32 values in rank order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.triton_pdl import wait_and_release

FLAG_ROWS = 4096  # flags per source rank: the most rows one call may carry


@triton.jit
def _allreduce_add_rms_norm_kernel(
    x_ptr,  # [M, H] this rank's partial sums
    res_ptr,  # [M, H] residual
    w_ptr,  # [H] norm weight
    out_ptr,  # [M, H] normed output
    res_out_ptr,  # [M, H] x summed over ranks + residual
    inbox_ptrs,  # int64 [WORLD]: every rank's inboxes (as mapped here): [2, WORLD, inbox_elems] elements each
    flag_ptrs,  # int64 [WORLD]: every rank's flags (as mapped here): int32 [WORLD, FLAGS] each
    epoch_ptr,  # int32 [FLAGS]: calls each row has taken part in (this rank's)
    H,
    inbox_elems,
    eps,
    RANK: tl.constexpr,
    WORLD: tl.constexpr,
    FLAGS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_and_release(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < H
    epoch = tl.load(epoch_ptr + row) + 1  # int32; wraps around
    slot = (epoch & 1).to(tl.int64)
    x = tl.load(x_ptr + row * H + cols, mask=mask, other=0.0)  # [BLOCK_H]
    # Push this rank's row to every peer.
    for p in tl.static_range(WORLD):
        if p != RANK:
            inbox = tl.load(inbox_ptrs + p).to(x_ptr.dtype) + (slot * WORLD + RANK) * inbox_elems + row * H
            tl.store(inbox + cols, x, mask=mask)
            tl.debug_barrier()  # every thread's part of the row before the flag that publishes it
            flag = tl.load(flag_ptrs + p).to(tl.pointer_type(tl.int32)) + RANK * FLAGS + row
            tl.atomic_xchg(flag, epoch, sem="release", scope="sys")
    # Sum the ranks' rows in rank order.
    my_flags = tl.load(flag_ptrs + RANK).to(tl.pointer_type(tl.int32))
    my_inbox = tl.load(inbox_ptrs + RANK).to(x_ptr.dtype)
    acc = tl.zeros([BLOCK_H], dtype=tl.float32)
    for r in tl.static_range(WORLD):
        if r == RANK:
            acc += x.to(tl.float32)
        else:
            # The flag reads e, or already e + 1 when the peer finished this call and pushed its next row (into
            # the other inbox) before this program got here.
            ahead = tl.atomic_add(my_flags + r * FLAGS + row, 0, sem="acquire", scope="sys") - epoch
            while (ahead != 0) & (ahead != 1):
                ahead = tl.atomic_add(my_flags + r * FLAGS + row, 0, sem="acquire", scope="sys") - epoch
            part = tl.load(
                my_inbox + (slot * WORLD + r) * inbox_elems + row * H + cols,
                mask=mask,
                other=0.0,
                cache_modifier=".cg",
            )
            acc += part.to(tl.float32)
    reduced = acc.to(x_ptr.dtype.element_ty).to(tl.float32)  # what an all-reduce would return
    r_in = tl.load(res_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    summed = (reduced + r_in).to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + row * H + cols, summed, mask=mask)
    s = summed.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(s * s, 0) / H + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * H + cols, (s * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(epoch_ptr + row, epoch)


def allreduce_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    inbox_ptrs: torch.Tensor,
    flag_ptrs: torch.Tensor,
    epochs: torch.Tensor,
    inbox_elems: int,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fused_add_rms_norm(sum of x over the ranks, residual, weight, eps)`` as ``(normed, new residual)``.

    x, residual: contiguous [M, H] of one dtype, ``M * H <= inbox_elems``, ``M <= FLAG_ROWS``; weight [H];
    ``inbox_ptrs`` / ``flag_ptrs``: int64 [world_size] device tensors of every rank's inboxes / flags as mapped in
    this process, ``epochs`` this rank's int32 [FLAG_ROWS] call counts (see the module docstring). Every rank must
    make the same calls (same M, H, dtype, in the same order).
    """
    M, H = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x)
    if M == 0:
        return out, res_out
    _allreduce_add_rms_norm_kernel[(M,)](
        x,
        residual,
        weight,
        out,
        res_out,
        inbox_ptrs,
        flag_ptrs,
        epochs,
        H,
        inbox_elems,
        eps,
        RANK=rank,
        WORLD=world_size,
        FLAGS=FLAG_ROWS,
        BLOCK_H=triton.next_power_of_2(H),
        num_warps=4 if H <= 2048 else 8,
        **pdl.launch_kwargs(x.device),
    )
    return out, res_out
