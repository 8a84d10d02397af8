"""Triton skinny GEMM for decode-sized batches: ``y = x @ weight.T (+ bias)`` with ``M <= 64`` rows.

At these sizes a linear layer is a weight stream: every weight element is read once and used by at most 64 rows, so
the kernel's job is to keep enough bytes in flight to run HBM at full speed. Each program owns ``BLOCK_N`` output
columns for all ``M`` rows and walks a slice of ``K`` in coalesced ``[BLOCK_N, BLOCK_K]`` tiles (software-pipelined
``NUM_STAGES`` deep). ``M == 1`` uses a float32 FMA accumulator reduced once at the end; ``M > 1`` pads the rows to
``BLOCK_M`` = the smallest power of two >= ``max(16, M)`` (16, 32 or 64) and uses ``tl.dot(w_tile, x_tile.T)``
(tensor cores; the padding costs no memory traffic).

The kernel serves up to :data:`KERNEL_MAX_M` (64) rows; :func:`dispatch_linear` / :func:`dispatch_silu_and_mul_linear`
send it batches of at most :data:`MAX_M` rows and the rest to cuBLAS. ``MAX_M`` is 16 unless the environment
variable ``INFERD_SKINNY_MAX_M`` (an integer in 1..64, read once when this module is imported; unset or empty means
16) says otherwise: e.g. ``INFERD_SKINNY_MAX_M=64`` to measure the kernel against cuBLAS at 17..64 rows.

When ``N / BLOCK_N`` tiles cannot fill the GPU, ``K`` is split across programs, still in ONE kernel: each program
writes its float32 partial tile to a workspace and bumps its column tile's arrival counter (a gpu-scope acq_rel
atomic); the last program to arrive sums the partials in split order 0..S-1 (deterministic, whatever the arrival
order), adds the bias, writes the output and resets the counter to zero. The counters are a persistent per-device
int32 buffer (:func:`_arrival_counters`), so a launch (and a CUDA-graph replay) allocates nothing but the output and
the workspace. Launches sharing a device's counters must not run concurrently (one stream, as the model runner does).

``silu_and_mul_linear`` is the same kernel with a prologue that builds each x tile as ``silu(gate) * up`` from a
``[gate | up]`` input (the MLP's down projection fed by the un-activated gate_up output): one kernel instead of two.
``add_rms_norm_linear`` likewise folds the residual add + RMSNorm before a projection into its x tiles (whole-K
programs only; the decoder layer sends it one-row batches, :data:`NORM_MAX_M`).

Launch parameters come from a small table (:func:`pick_config`) keyed on ``M``, ``N``, ``K`` and the SM count: no
autotuning at run time and no host syncs, so a call can be captured in a CUDA graph once an eager call has compiled
the kernel (and allocated the device's split-K counters).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from inferd.kernels import pdl
from inferd.kernels.triton_pdl import release, wait

KERNEL_MAX_M = 64  # largest batch the skinny kernel (``launch``) accepts
_DEFAULT_MAX_M = 16  # MAX_M unless INFERD_SKINNY_MAX_M says otherwise
MAX_SPLIT_K = 64
_DOT_BLOCK_M = 16  # tl.dot's smallest tile side
_MIN_COUNTERS = 4096  # split-K arrival counters allocated per device at least (one per column tile)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_DEFAULT_SMS = 132  # H100 SXM; used where the device has no SM count (CPU interpreter)


def parse_skinny_max_m(value: str | None) -> int:
    """``MAX_M`` from the value of ``INFERD_SKINNY_MAX_M``: unset or empty means the default (16), otherwise an
    integer in ``1..KERNEL_MAX_M``; anything else raises ValueError."""
    if value is None or not value.strip():
        return _DEFAULT_MAX_M
    try:
        max_m = int(value)
    except ValueError:
        max_m = 0
    if not 1 <= max_m <= KERNEL_MAX_M:
        raise ValueError(
            f"INFERD_SKINNY_MAX_M must be an integer in 1..{KERNEL_MAX_M} (the most rows the skinny GEMM serves; "
            f"default {_DEFAULT_MAX_M}); got {value!r}"
        )
    return max_m


# Largest batch dispatch_linear / dispatch_silu_and_mul_linear send to the skinny kernel; larger ones go to cuBLAS.
MAX_M = parse_skinny_max_m(os.environ.get("INFERD_SKINNY_MAX_M"))

# Largest batch whose pre-norm dispatch_add_rms_norm_linear fuses into the skinny GEMM. One row only: on an H100
# (benchmarks/results/run-s8-3) Qwen3-0.6B batch 1 went 0.922 -> 0.858-0.879 ms per token with it, but batches of
# 8 / 16, where the tensor-core path takes it, 1.24-1.25 / 1.30-1.35 -> 1.42-1.44 / 1.47-1.48 ms.
NORM_MAX_M = 1

# device -> int32 split-K arrival counters (all zero between launches); outgrown buffers stay alive in the retired
# list because CUDA graphs captured before the growth still point at them.
_COUNTERS: dict[torch.device, torch.Tensor] = {}
_RETIRED_COUNTERS: list[torch.Tensor] = []


@triton.jit
def _load_x(x_ptrs, kk, K, EVEN_K: tl.constexpr, SILU_MUL: tl.constexpr):
    """The x tile at ``x_ptrs`` (row pointers broadcast against ``kk``). With ``SILU_MUL`` the rows are
    ``[gate | up]`` (the up half starts ``K`` elements after the gate half) and the tile is
    ``silu(gate) * up``: float32 math rounded to x's dtype, exactly as ``triton_ops.silu_and_mul`` computes it."""
    if SILU_MUL:
        if EVEN_K:
            gate = tl.load(x_ptrs).to(tl.float32)
            up = tl.load(x_ptrs + K).to(tl.float32)
        else:
            gate = tl.load(x_ptrs, mask=kk < K, other=0.0).to(tl.float32)
            up = tl.load(x_ptrs + K, mask=kk < K, other=0.0).to(tl.float32)
        xv = (gate * tl.sigmoid(gate) * up).to(x_ptrs.dtype.element_ty)
    else:
        if EVEN_K:
            xv = tl.load(x_ptrs)
        else:
            xv = tl.load(x_ptrs, mask=kk < K, other=0.0)
    return xv


@triton.jit
def _norm_input(xv, res_ptrs, nw_ptrs, k_ok, EVEN_K: tl.constexpr, HAS_RES: tl.constexpr):
    """The pre-norm prologue of one x tile: ``h = x + residual`` rounded to x's dtype, then ``(h * norm_weight,
    h * h)`` in float32. The caller scales its products by ``rsqrt(mean(h * h) + eps)`` at the end (the norm is
    linear in h)."""
    if HAS_RES:
        if EVEN_K:
            r = tl.load(res_ptrs)
        else:
            r = tl.load(res_ptrs, mask=k_ok, other=0.0)
        xv = (xv.to(tl.float32) + r.to(tl.float32)).to(xv.dtype)
    if EVEN_K:
        nw = tl.load(nw_ptrs)
    else:
        nw = tl.load(nw_ptrs, mask=k_ok, other=0.0)
    hf = xv.to(tl.float32)
    return hf * nw.to(tl.float32), hf * hf


@triton.jit
def _store_residual(x_ptr, res_ptr, h_ptr, M, K, stride_m, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """``h = x + residual`` (rounded to x's dtype) for the [M, K] rows, by the one program that calls it, after its
    main loop (a store inside the pipelined weight loop slows it down); the rows are L2-hot by then."""
    offs_m = tl.arange(0, BLOCK_M)
    for k in range(0, K, BLOCK_K):
        kk = k + tl.arange(0, BLOCK_K)
        offs = offs_m[:, None] * stride_m + kk[None, :]  # [BLOCK_M, BLOCK_K]
        ok = (offs_m < M)[:, None] & (kk < K)[None, :]
        xv = tl.load(x_ptr + offs, mask=ok, other=0.0)
        r = tl.load(res_ptr + offs, mask=ok, other=0.0)
        tl.store(h_ptr + offs, (xv.to(tl.float32) + r.to(tl.float32)).to(xv.dtype), mask=ok)


@triton.jit(do_not_specialize=["M", "stride_os", "split_k"])
def _gemv_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    ws_ptr,
    cnt_ptr,
    res_ptr,
    nw_ptr,
    h_ptr,
    eps,
    M,
    N,
    K,
    k_split,
    split_k,
    stride_xm,
    stride_wn,
    stride_om,
    stride_os,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    SILU_MUL: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait(USE_PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_ok = offs_n < N
    rows_n = tl.minimum(offs_n, N - 1)  # columns past N reread the last row instead of masking every load
    w_rows = w_ptr + rows_n.to(tl.int64) * stride_wn  # [BLOCK_N] row pointers
    offs_k = tl.arange(0, BLOCK_K)
    k_begin = pid_k * k_split
    k_end = tl.minimum(k_begin + k_split, K)
    if USE_DOT:
        offs_m = tl.arange(0, BLOCK_M)
        x_rows = x_ptr + tl.minimum(offs_m, M - 1) * stride_xm  # [BLOCK_M] padded rows reread row M - 1
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        sumsq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)  # NORM: h^2, reduced after the loop
        row_offs = tl.minimum(offs_m, M - 1) * stride_xm  # [BLOCK_M] (the residual shares x's layout)
        for k in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kk = k + offs_k  # [BLOCK_K]
            if EVEN_K:
                w = tl.load(w_rows[:, None] + kk[None, :])  # [BLOCK_N, BLOCK_K]
            else:
                w = tl.load(w_rows[:, None] + kk[None, :], mask=(kk < K)[None, :], other=0.0)
            x_ptrs = x_rows[:, None] + kk[None, :]  # [BLOCK_M, BLOCK_K]
            xv = _load_x(x_ptrs, kk[None, :], K, EVEN_K, SILU_MUL)
            if NORM:
                offs = row_offs[:, None] + kk[None, :]  # [BLOCK_M, BLOCK_K]
                xn, sq = _norm_input(
                    xv, res_ptr + offs, nw_ptr + kk[None, :], (kk < K)[None, :], EVEN_K, HAS_RES
                )
                sumsq += sq
                xv = xn.to(xv.dtype)
            w = w.to(xv.dtype)
            if IEEE_DOT:
                acc = tl.dot(w, tl.trans(xv), acc, input_precision="ieee")  # [BLOCK_N, BLOCK_M]
            else:
                acc = tl.dot(w, tl.trans(xv), acc)
        if NORM:
            acc = acc * tl.rsqrt(tl.sum(sumsq, axis=1) / K + eps)[None, :]
        tile = offs_m[None, :] * stride_om + offs_n[:, None]  # [BLOCK_N, BLOCK_M] offsets in one [M, N] plane
        tile_ok = n_ok[:, None] & (offs_m < M)[None, :]
        bias_offs = offs_n[:, None]  # [BLOCK_N, 1]
        bias_ok = n_ok[:, None]
    else:
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        sumsq1 = tl.zeros([BLOCK_K], dtype=tl.float32)  # NORM: h^2 per K lane
        for k in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
            kk = k + offs_k
            if EVEN_K:
                w = tl.load(w_rows[:, None] + kk[None, :])  # [BLOCK_N, BLOCK_K]
            else:
                w = tl.load(w_rows[:, None] + kk[None, :], mask=(kk < K)[None, :], other=0.0)
            xv = _load_x(x_ptr + kk, kk, K, EVEN_K, SILU_MUL)  # [BLOCK_K]
            if NORM:
                xn, sq = _norm_input(xv, res_ptr + kk, nw_ptr + kk, kk < K, EVEN_K, HAS_RES)
                sumsq1 += sq
                acc2 += w.to(tl.float32) * xn[None, :]
            else:
                acc2 += w.to(tl.float32) * xv.to(tl.float32)[None, :]
        acc = tl.sum(acc2, axis=1)  # [BLOCK_N]
        if NORM:
            acc = acc * tl.rsqrt(tl.sum(sumsq1, axis=0) / K + eps)
        tile = offs_n
        tile_ok = n_ok
        bias_offs = offs_n
        bias_ok = n_ok
    release(USE_PDL)  # the weight stream is done: the next kernel may launch
    if NORM and HAS_RES:
        # Program 0 writes the next residual. After the release is safe: a dependent launch's wait returns only
        # once this whole grid has finished and its stores are visible.
        if pid_n == 0:
            _store_residual(x_ptr, res_ptr, h_ptr, M, K, stride_xm, BLOCK_M, BLOCK_K)
    if SPLIT:
        # Publish this split's float32 partial, then count arrivals at this column tile. The barrier orders every
        # thread's partial stores before the (single-thread, gpu-scope acq_rel) atomic that releases them; the last
        # program to arrive acquires all of them, sums them in split order 0..S-1 (deterministic whatever the
        # arrival order), writes the output and resets the counter for the next launch / graph replay.
        tl.store(ws_ptr + pid_k.to(tl.int64) * stride_os + tile, acc, mask=tile_ok)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == split_k - 1:
            total = tl.load(ws_ptr + tile, mask=tile_ok, other=0.0, cache_modifier=".cg")
            for s in range(1, split_k):
                part = tl.load(ws_ptr + s * stride_os + tile, mask=tile_ok, other=0.0, cache_modifier=".cg")
                total += part
            if HAS_BIAS:
                total += tl.load(b_ptr + bias_offs, mask=bias_ok, other=0.0).to(tl.float32)
            tl.store(out_ptr + tile, total.to(out_ptr.dtype.element_ty), mask=tile_ok)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + bias_offs, mask=bias_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + tile, acc.to(out_ptr.dtype.element_ty), mask=tile_ok)


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


# (use_dot, fp32) -> (block_n, block_k, num_warps, num_stages, programs per SM to aim for); the dot path pads rows
# to BLOCK_M = 16, 32 or 64 (64-row 16-bit tiles take _WIDE_BLOCK_K / _WIDE_STAGES). Above 16 rows the H100 sweep
# (run-s5-3) found cuBLAS faster, so only INFERD_SKINNY_MAX_M > 16 sends such batches here.
_TABLE: dict[tuple[bool, bool], tuple[int, int, int, int, int]] = {
    (False, False): (16, 512, 8, 3, 4),
    (False, True): (16, 256, 4, 3, 4),
    (True, False): (64, 128, 4, 4, 2),
    (True, True): (32, 64, 4, 2, 2),
}
_WIDE_BLOCK_K, _WIDE_STAGES = 64, 3  # 16-bit tiles of 64 rows: ~48 KB of shared memory instead of ~128 KB


def dot_block_m(M: int) -> int:
    """The dot path's padded row count for ``M`` rows: the smallest power of two >= ``max(16, M)``."""
    return max(_DOT_BLOCK_M, triton.next_power_of_2(max(M, 1)))


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


# Tensor-core tiles for 16-bit weights of at most this size (Qwen3-0.6B's layers: 2-12 MiB) stream best as few long
# programs: whole-K tiles, or 384-long K slices when K >= 3072. H100 sweep at 16..64 rows (benchmarks/results/run-s5-3,
# gemv_bench.py --sweep): 5.7 / 6.5 / 6.7 / 7.1 us for qkv / o / gate_up / down at 16 rows, where the split-K rule
# below took 7.8 / 10.3 / 10.4 / 9.9 and cuBLAS 5.5 / 6.1 / 7.6 / 7.3. Larger weights keep the rule below.
_SMALL_WEIGHT_BYTES = 12 << 20
_SMALL_K_SPLIT = 384


def _small_weight_config(N: int, K: int, num_sms: int) -> GemvConfig:
    cfg = fit_config(GemvConfig(True, 32 if K >= 3072 else 64, 128, 4, 4), N, K, num_sms, 1)
    k_split = _SMALL_K_SPLIT if K >= 3072 and _SMALL_K_SPLIT % cfg.block_k == 0 else 0
    return replace(cfg, k_split=k_split if k_split < K else 0)


# One row (the FMA path), 16-bit weights of at most _SMALL_WEIGHT_BYTES: whole-K programs too, never split-K. Where
# the output has at least 16 columns per SM, 8 columns per program in pipelined 256-long K blocks; narrower outputs
# (o_proj, down_proj) take 4 columns per program (about two per SM) and long K blocks. H100 sweep at one row
# (benchmarks/results/run-s6-6, in CUDA graphs with PDL): qkv / o / gate_up / down 4.88 / 5.34 / 6.25 / 5.80 us with
# the table below -> 4.42 / 3.12 / 5.75 / 3.99 us; Qwen3-0.6B batch-1 decode 1.05 -> 0.93 ms per token.
_SMALL_FMA_WIDE = GemvConfig(False, 8, 256, 4, 3)
_SMALL_FMA_NARROW = GemvConfig(False, 4, 2048, 8, 1)


def _small_weight_fma_config(N: int, K: int, num_sms: int) -> GemvConfig:
    base = _SMALL_FMA_WIDE if N >= 16 * num_sms else _SMALL_FMA_NARROW
    return replace(fit_config(base, N, K, num_sms, 1), k_split=0)


def pick_config(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int) -> GemvConfig:
    """The launch table: FMA tiles for one row, tensor-core tiles for 2..64 rows; split-K when N is narrow. Small 16-bit
    weights: see ``_SMALL_WEIGHT_BYTES`` (tensor-core path) and ``_SMALL_FMA_WIDE`` (one row)."""
    use_dot = M > 1
    fp32 = dtype == torch.float32
    if not fp32 and N * K * dtype.itemsize <= _SMALL_WEIGHT_BYTES:
        return _small_weight_config(N, K, num_sms) if use_dot else _small_weight_fma_config(N, K, num_sms)
    block_n, block_k, warps, stages, per_sm = _TABLE[(use_dot, fp32)]
    if use_dot and not fp32 and dot_block_m(M) == KERNEL_MAX_M:
        block_k, stages = _WIDE_BLOCK_K, _WIDE_STAGES
    cfg = GemvConfig(use_dot, block_n, block_k, warps, stages)
    return fit_config(cfg, N, K, num_sms, per_sm)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _arrival_counters(device: torch.device, n_tiles: int) -> torch.Tensor:
    """The split-K arrival counters of ``device``: a persistent int32 tensor of at least ``n_tiles`` zeros (every
    launch leaves the counters it used at zero). Allocated on first use and grown only outside a CUDA-graph capture;
    an outgrown buffer is kept alive, since graphs captured earlier still point at it."""
    counters = _COUNTERS.get(device)
    if counters is not None and counters.numel() >= n_tiles:
        return counters
    if _capturing(device):
        have = 0 if counters is None else counters.numel()
        raise RuntimeError(
            f"the split-K GEMV needs {n_tiles} arrival counters on {device} but has {have}, and they cannot be "
            "allocated during a CUDA-graph capture: run the same call once eagerly before capturing."
        )
    if counters is not None:
        _RETIRED_COUNTERS.append(counters)
    size = max(_MIN_COUNTERS, triton.next_power_of_2(n_tiles))
    counters = torch.zeros(size, dtype=torch.int32, device=device)
    _COUNTERS[device] = counters
    return counters


def launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: GemvConfig,
    *,
    silu_mul: bool = False,
    norm: tuple[torch.Tensor | None, torch.Tensor, float, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``linear`` with explicit launch parameters (tests and benchmarks sweep these). With ``silu_mul``, ``x`` is
    ``[M, 2 * K]`` (gate | up) and the product is ``silu_and_mul(x) @ weight.T (+ bias)``. With ``norm`` =
    ``(residual or None, norm_weight [K], eps, h [M, K])`` the product is of ``rms_norm(x + residual)`` and the sum
    is written to ``h`` (see :func:`add_rms_norm_linear`); it needs a config without a K split."""
    what = "silu_and_mul_linear needs x [M, 2 * K]" if silu_mul else "linear needs x [M, K]"
    width = 2 * weight.shape[1] if weight.dim() == 2 else -1
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != (width if silu_mul else weight.shape[1]):
        raise ValueError(f"{what} and weight [N, K]; got {tuple(x.shape)} and {tuple(weight.shape)}")
    M = x.shape[0]
    N, K = weight.shape
    if M > KERNEL_MAX_M:
        raise ValueError(
            f"the skinny GEMM serves at most {KERNEL_MAX_M} rows; got {M} (larger batches belong to F.linear)"
        )
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
    n_tiles = triton.cdiv(N, block_n)
    residual, norm_weight, eps, h = None, None, 0.0, None
    if norm is not None:
        residual, norm_weight, eps, h = norm
        if split_k > 1 or silu_mul:
            raise ValueError("the fused pre-norm needs whole-K programs (k_split 0) and no silu_mul input")
        if x.stride(0) != K or h.shape != x.shape or h.stride(0) != K or norm_weight.shape != (K,):
            raise ValueError(
                f"the fused pre-norm needs contiguous x and h [M, K] and norm_weight [{K}]; got x "
                f"{tuple(x.shape)}, h {tuple(h.shape)}, norm_weight {tuple(norm_weight.shape)}"
            )
        if residual is not None and (residual.shape != x.shape or residual.stride(0) != K):
            raise ValueError(
                f"residual must be a contiguous {tuple(x.shape)} tensor; got {tuple(residual.shape)}"
            )
    if split_k > 1:
        workspace = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device)  # per-split partials
        counters = _arrival_counters(x.device, n_tiles)
    else:
        workspace, counters = out, out  # unused
    _gemv_kernel[(n_tiles, split_k)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        workspace,
        counters,
        residual if residual is not None else x,
        norm_weight if norm_weight is not None else x,
        h if h is not None else x,
        eps,
        M,
        N,
        K,
        k_split,
        split_k,
        x.stride(0),
        weight.stride(0),
        N,
        M * N,
        HAS_BIAS=bias is not None,
        USE_DOT=use_dot,
        IEEE_DOT=x.dtype == torch.float32,
        EVEN_K=K % block_k == 0,
        SPLIT=split_k > 1,
        SILU_MUL=silu_mul,
        NORM=norm is not None,
        HAS_RES=residual is not None,
        BLOCK_M=dot_block_m(M) if use_dot else 1,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
        **pdl.launch_kwargs(x.device),
    )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x [M, K] with ``M <= 64`` (:data:`KERNEL_MAX_M`; bf16/fp16/fp32), weight [N, K],
    bias [N] or None.

    Returns a new [M, N] tensor in ``x.dtype``; products are accumulated in float32 (split-K partials are summed in a
    fixed order, so results are deterministic). Capturable in a CUDA graph after one eager call per shape class.
    """
    cfg = pick_config(x.shape[0], weight.shape[0], weight.shape[-1], x.dtype, _sm_count(x.device))
    return launch(x, weight, bias, cfg)


def silu_and_mul_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear(silu_and_mul(x), weight, bias)`` in one kernel for x [M, 2 * K] (gate | up) with ``M <= 64``
    (:data:`KERNEL_MAX_M`), weight [N, K], bias [N] or None. The activation is computed as
    ``triton_ops.silu_and_mul`` computes it (float32, rounded to ``x.dtype``) and fed to the same launch config as
    :func:`linear` at K, so on the GPU the result is bit-identical to the two-kernel path. Same capture rules as
    :func:`linear`."""
    cfg = pick_config(x.shape[0], weight.shape[0], weight.shape[-1], x.dtype, _sm_count(x.device))
    return launch(x, weight, bias, cfg, silu_mul=True)


def add_rms_norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.add_rms_norm_linear`` in one kernel for contiguous x (and residual) [M, K] with ``M <= 64``
    (:data:`KERNEL_MAX_M`), with :func:`pick_config`'s tiles and whole-K programs (no K split).

    Every program adds the residual to the x tiles it loads (rounded to x's dtype, as ``fused_add_rms_norm`` does),
    multiplies them by ``norm_weight`` and accumulates their squares next to the products; the products are scaled
    by ``rsqrt(mean(h^2) + eps)`` at the end, which saves the norm kernel (and its launch) before the projection.
    The normed rows are not rounded to x's dtype before the products (the two-kernel path rounds them), so 16-bit
    results differ from it by rounding. Program 0 writes ``h = x + residual`` (a new tensor; with no residual, ``x``
    itself is returned as ``h``). Same capture rules as :func:`linear`."""
    cfg = pick_config(x.shape[0], weight.shape[0], weight.shape[-1], x.dtype, _sm_count(x.device))
    cfg = replace(cfg, k_split=0)  # whole-K programs (the dispatcher sends split configs to the two kernels)
    return _launch_norm(x, residual, norm_weight, eps, weight, bias, cfg)


def _launch_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: GemvConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x if residual is None else torch.empty_like(x)
    out = launch(x, weight, bias, cfg, norm=(residual, norm_weight, eps, h))
    return out, h


def _skinny_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.is_cuda
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_M
        and x.is_contiguous()
        and x.dtype in _DTYPES
        and weight.dim() == 2
        and weight.dtype == x.dtype
        and weight.stride(1) == 1
    )


def dispatch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``kernels.linear`` on CUDA: the skinny kernel for a contiguous 2-D CUDA ``x`` of 1..``MAX_M`` rows (16 unless
    ``INFERD_SKINNY_MAX_M`` says otherwise) whose weight shares its dtype and has a contiguous last dim; ``F.linear``
    (cuBLAS) for everything else."""
    if _skinny_ok(x, weight):
        return linear(x, weight, bias)
    return F.linear(x, weight, bias)


def dispatch_silu_and_mul_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``kernels.silu_and_mul_linear`` on CUDA: the fused skinny kernel where :func:`dispatch_linear` would use the
    skinny kernel (and ``x`` is [M, 2 * K]); otherwise ``triton_ops.silu_and_mul`` then :func:`dispatch_linear`."""
    if _skinny_ok(x, weight) and x.shape[1] == 2 * weight.shape[1]:
        return silu_and_mul_linear(x, weight, bias)
    from inferd.kernels import triton_ops

    return dispatch_linear(triton_ops.silu_and_mul(x), weight, bias)


def dispatch_add_rms_norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.add_rms_norm_linear`` on CUDA: the fused skinny kernel where :func:`dispatch_linear` would use the
    skinny kernel with whole-K programs (and x, residual are contiguous [M, K] of one dtype); otherwise
    ``triton_ops.fused_add_rms_norm`` (or ``rms_norm``) then :func:`dispatch_linear`."""
    if (
        _skinny_ok(x, weight)
        and x.shape[0] <= NORM_MAX_M
        and x.shape[1] == weight.shape[1]
        and norm_weight.shape == (x.shape[1],)
        and (
            residual is None
            or (residual.shape == x.shape and residual.dtype == x.dtype and residual.is_contiguous())
        )
    ):
        cfg = pick_config(x.shape[0], weight.shape[0], weight.shape[1], x.dtype, _sm_count(x.device))
        if cfg.split_k(weight.shape[1]) == 1:
            return _launch_norm(x, residual, norm_weight, eps, weight, bias, cfg)
    from inferd.kernels import triton_ops

    if residual is None:
        return dispatch_linear(triton_ops.rms_norm(x, norm_weight, eps), weight, bias), x
    normed, summed = triton_ops.fused_add_rms_norm(x, residual, norm_weight, eps)
    return dispatch_linear(normed, weight, bias), summed
