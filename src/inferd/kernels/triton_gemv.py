"""Triton skinny GEMM for decode-sized batches: ``y = x @ weight.T (+ bias)`` with ``M <= 16`` rows.

At these sizes a linear layer is a weight stream: every weight element is read once and used by at most 16 rows, so
the kernel's job is to keep enough bytes in flight to run HBM at full speed. Each program owns ``BLOCK_N`` output
columns for all ``M`` rows and walks a slice of ``K`` in coalesced ``[BLOCK_N, BLOCK_K]`` tiles (software-pipelined
``NUM_STAGES`` deep). ``M == 1`` uses a float32 FMA accumulator reduced once at the end; ``M > 1`` pads the rows to
``BLOCK_M = 16`` and uses ``tl.dot(w_tile, x_tile.T)`` (tensor cores; the padding costs no memory traffic). When
``N / BLOCK_N`` tiles cannot fill the GPU, ``K`` is split across programs that write float32 partials, and a second
kernel sums them in a fixed order (deterministic) and adds the bias.

Launch parameters come from a small table (:func:`pick_config`) keyed on ``M``, ``N``, ``K`` and the SM count: no
autotuning at run time, no host syncs, and the only allocations are the output (and the split-K workspace), so a call
can be captured in a CUDA graph once the kernel has been compiled by an eager call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

MAX_M = 16  # largest batch the skinny kernel serves; larger ones go to cuBLAS
MAX_SPLIT_K = 64
_DOT_BLOCK_M = 16  # tl.dot's smallest tile side
_REDUCE_TILE = 2048  # split-K partials each reduce program sums at once
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_DEFAULT_SMS = 132  # H100 SXM; used where the device has no SM count (CPU interpreter)


@triton.jit(do_not_specialize=["M", "stride_os"])
def _gemv_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    M,
    N,
    K,
    k_split,
    stride_xm,
    stride_wn,
    stride_om,
    stride_os,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_ok = offs_n < N
    rows_n = tl.minimum(offs_n, N - 1)  # columns past N reread the last row instead of masking every load
    w_rows = w_ptr + rows_n.to(tl.int64) * stride_wn  # [BLOCK_N] row pointers
    offs_k = tl.arange(0, BLOCK_K)
    k_begin = pid_k * k_split
    k_end = tl.minimum(k_begin + k_split, K)
    out_base = out_ptr + pid_k.to(tl.int64) * stride_os
    if USE_DOT:
        offs_m = tl.arange(0, BLOCK_M)
        x_rows = x_ptr + tl.minimum(offs_m, M - 1) * stride_xm  # [BLOCK_M] padded rows reread row M - 1
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kk = k + offs_k  # [BLOCK_K]
            if EVEN_K:
                w = tl.load(w_rows[:, None] + kk[None, :])  # [BLOCK_N, BLOCK_K]
                xv = tl.load(x_rows[:, None] + kk[None, :])  # [BLOCK_M, BLOCK_K]
            else:
                k_ok = (kk < K)[None, :]
                w = tl.load(w_rows[:, None] + kk[None, :], mask=k_ok, other=0.0)
                xv = tl.load(x_rows[:, None] + kk[None, :], mask=k_ok, other=0.0)
            w = w.to(xv.dtype)
            if IEEE_DOT:
                acc = tl.dot(w, tl.trans(xv), acc, input_precision="ieee")  # [BLOCK_N, BLOCK_M]
            else:
                acc = tl.dot(w, tl.trans(xv), acc)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            acc = acc + bias[:, None]
        out_ptrs = out_base + offs_m[None, :] * stride_om + offs_n[:, None]  # [BLOCK_N, BLOCK_M]
        out_mask = n_ok[:, None] & (offs_m < M)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kk = k + offs_k
            if EVEN_K:
                w = tl.load(w_rows[:, None] + kk[None, :])  # [BLOCK_N, BLOCK_K]
                xv = tl.load(x_ptr + kk)  # [BLOCK_K]
            else:
                w = tl.load(w_rows[:, None] + kk[None, :], mask=(kk < K)[None, :], other=0.0)
                xv = tl.load(x_ptr + kk, mask=kk < K, other=0.0)
            acc2 += w.to(tl.float32) * xv.to(tl.float32)[None, :]
        y = tl.sum(acc2, axis=1)  # [BLOCK_N]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(out_base + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit(do_not_specialize=["total", "split_k"])
def _split_k_reduce_kernel(
    ws_ptr,
    b_ptr,
    out_ptr,
    total,
    N,
    split_k,
    HAS_BIAS: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index into [M, N]
    splits = tl.arange(0, SPLIT_BLOCK)
    mask = offs < total
    tile_mask = (splits < split_k)[:, None] & mask[None, :]
    parts = tl.load(ws_ptr + splits[:, None] * total + offs[None, :], mask=tile_mask, other=0.0)
    acc = tl.sum(parts, axis=0)  # [BLOCK], a fixed reduction tree: deterministic
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters of one skinny-GEMM call. ``k_split`` (a multiple of ``block_k``) is the K-slice per program;
    ``split_k = cdiv(K, k_split)`` programs share each column tile; 0 means no split (one slice of all of K)."""

    use_dot: bool
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    k_split: int = 0

    def split_k(self, K: int) -> int:
        return 1 if self.k_split <= 0 or K == 0 else triton.cdiv(K, self.k_split)

    def describe(self, K: int) -> str:
        kind = "dot" if self.use_dot else "fma"
        return f"{kind} n{self.block_n} k{self.block_k} w{self.num_warps} s{self.num_stages} split{self.split_k(K)}"


# (use_dot, fp32) -> (block_n, block_k, num_warps, num_stages, programs per SM to aim for)
_TABLE: dict[tuple[bool, bool], tuple[int, int, int, int, int]] = {
    (False, False): (16, 512, 8, 3, 4),
    (False, True): (16, 256, 4, 3, 4),
    (True, False): (64, 128, 4, 4, 2),
    (True, True): (32, 64, 4, 2, 2),
}


def fit_config(cfg: GemvConfig, N: int, K: int, num_sms: int, programs_per_sm: int) -> GemvConfig:
    """Shrink ``cfg``'s blocks to small problems and choose the K split: split only when the column tiles alone
    leave SMs idle, aiming at ``programs_per_sm * num_sms`` programs with whole ``block_k`` chunks each."""
    min_n = 16 if cfg.use_dot else 1
    block_n = min(cfg.block_n, max(min_n, triton.next_power_of_2(max(N, 1))))
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(max(K, 1))))
    n_tiles = triton.cdiv(N, block_n)
    k_blocks = max(1, triton.cdiv(K, block_k))
    want = min(triton.cdiv(programs_per_sm * num_sms, n_tiles), k_blocks, MAX_SPLIT_K)
    k_split = 0
    if n_tiles < num_sms and want > 1:
        k_split = triton.cdiv(k_blocks, want) * block_k
        if k_split >= K:
            k_split = 0
    return replace(cfg, block_n=block_n, block_k=block_k, k_split=k_split)


def pick_config(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int) -> GemvConfig:
    """The launch table: FMA tiles for one row, tensor-core tiles for 2..16 rows; split-K when N is narrow."""
    use_dot = M > 1
    block_n, block_k, warps, stages, per_sm = _TABLE[(use_dot, dtype == torch.float32)]
    cfg = GemvConfig(use_dot, block_n, block_k, warps, stages)
    return fit_config(cfg, N, K, num_sms, per_sm)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: GemvConfig) -> torch.Tensor:
    """``linear`` with explicit launch parameters (tests and benchmarks sweep these)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear needs x [M, K] and weight [N, K]; got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    M, K = x.shape
    N = weight.shape[0]
    if M > MAX_M:
        raise ValueError(f"the skinny GEMM serves at most {MAX_M} rows; got {M}")
    if bias is not None and bias.shape != (N,):
        raise ValueError(f"bias must have shape ({N},); got {tuple(bias.shape)}")
    x = x if x.stride(1) == 1 else x.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)  # [M, N]
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias.expand(M, N))
    use_dot = cfg.use_dot or M > 1
    block_n = max(cfg.block_n, 16) if use_dot else cfg.block_n
    block_k = max(cfg.block_k, 16)
    split_k = cfg.split_k(K)
    if split_k > 1 and (cfg.k_split % block_k or split_k > MAX_SPLIT_K):
        raise ValueError(
            f"k_split {cfg.k_split} must be a multiple of block_k {block_k} giving at most {MAX_SPLIT_K} splits"
        )
    k_split = cfg.k_split if split_k > 1 else triton.cdiv(K, block_k) * block_k
    dst = out if split_k == 1 else torch.empty((split_k, M, N), dtype=torch.float32, device=x.device)
    _gemv_kernel[(triton.cdiv(N, block_n), split_k)](
        x,
        weight,
        bias if bias is not None else weight,
        dst,
        M,
        N,
        K,
        k_split,
        x.stride(0),
        weight.stride(0),
        N,
        M * N,
        HAS_BIAS=bias is not None and split_k == 1,
        USE_DOT=use_dot,
        IEEE_DOT=x.dtype == torch.float32,
        EVEN_K=K % block_k == 0,
        BLOCK_M=_DOT_BLOCK_M if use_dot else 1,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
    )
    if split_k > 1:
        split_block = max(4, triton.next_power_of_2(split_k))
        block = _REDUCE_TILE // split_block
        _split_k_reduce_kernel[(triton.cdiv(M * N, block),)](
            dst,
            bias if bias is not None else dst,
            out,
            M * N,
            N,
            split_k,
            HAS_BIAS=bias is not None,
            SPLIT_BLOCK=split_block,
            BLOCK=block,
            num_warps=4,
        )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x [M, K] with ``M <= 16`` (bf16/fp16/fp32), weight [N, K], bias [N] or None.

    Returns a new [M, N] tensor in ``x.dtype``; products are accumulated in float32 (split-K partials are summed in a
    fixed order, so results are deterministic). Capturable in a CUDA graph after one eager call per shape class.
    """
    cfg = pick_config(x.shape[0], weight.shape[0], x.shape[-1], x.dtype, _sm_count(x.device))
    return launch(x, weight, bias, cfg)


def dispatch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``kernels.linear`` on CUDA: the skinny kernel for a contiguous 2-D CUDA ``x`` of 1..16 rows whose weight shares
    its dtype and has a contiguous last dim; ``F.linear`` (cuBLAS) for everything else."""
    if (
        x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_M
        and x.is_contiguous()
        and x.dtype in _DTYPES
        and weight.dim() == 2
        and weight.dtype == x.dtype
        and weight.stride(1) == 1
    ):
        return linear(x, weight, bias)
    return F.linear(x, weight, bias)
