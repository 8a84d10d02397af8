"""One-shot all-reduce through CUDA symmetric memory, for the small all-reduces of tensor-parallel decode.

NCCL spends 10–20 µs on an all-reduce of a few KiB; a one-shot all-reduce through peer-to-peer memory (every
GPU reads its peers' copies over NVLink and sums them) takes a few µs. PyTorch ships the kernel:
``torch.ops.symm_mem.one_shot_all_reduce_copy(symm_buffer, local_input, "sum", group_name)`` copies
``local_input`` into this rank's symmetric buffer, meets the peers on the buffer's signal pad, sums every
rank's buffer in rank order (the same bits on every rank) into a fresh output and meets the peers again
before returning, so the next call may overwrite the buffer. The buffer comes from
``_SymmetricMemory.empty_strided_p2p`` (CUDA backend: cuMem allocations shared as POSIX file descriptors) and
is mapped on every rank by ``torch.distributed._symmetric_memory.rendezvous``. Only bfloat16 and float32 are
reduced (the kernel's dtypes); NVLink multicast is never used (``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` is set
before the rendezvous, so no multicast object is created).

The same buffer also holds, after the one-shot kernel's part, the inboxes and flags of
``kernels/triton_allreduce.py``: the all-reduce fused with the residual add and RMSNorm that follow a row-parallel
projection (:meth:`CustomAllReduce.all_reduce_add_rms_norm`: one kernel, one handshake per call).

Construction is collective and checked: every step that can fail on one rank only (imports, checks, the
allocation, the rendezvous) is followed by an NCCL agreement, so no rank enters a symmetric-memory kernel its
peers skip; then an eager and a CUDA-graph self-test compare with NCCL. Any failure anywhere disables it on
every rank (one WARNING with the reasons) and all-reduces stay on NCCL. A self-test kernel that never finishes
cannot be undone in this process: that raises :class:`CustomAllReduceHung` naming ``--disable-custom-all-reduce``.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 << 20  # symmetric buffer: 1024 tokens x 4096 x bf16
ONE_SHOT_MAX_BYTES = 512 << 10  # larger all-reduces stay on NCCL (bandwidth, not latency, dominates)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)
_ALIGN = 16  # the kernel's vector width; sizes and offsets must be multiples
_KERNEL_TIMEOUT_S = 30.0
_RENDEZVOUS_STORE_TIMEOUT_S = 60.0


class CustomAllReduceHung(RuntimeError):
    """A self-test kernel never finished: the GPU stream cannot be recovered in this process."""


class _Hung(RuntimeError):
    pass


_ABANDONED: list[Any] = []  # what a hung self-test used; never freed (see CustomAllReduce.__init__)


def unavailable_reason(device: torch.device, world_size: int, backend: str | None) -> str | None:
    """Why a custom all-reduce cannot run here (``None`` when it may): CUDA, NCCL, 2..8 ranks, CUDA backend."""
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if not 2 <= world_size <= 8:
        return f"world size {world_size} is outside 2..8"
    if backend != "nccl":
        return f"process-group backend {backend!r} is not NCCL"
    symm_backend = os.environ.get("TORCH_SYMMMEM")
    if symm_backend not in (None, "", "CUDA"):
        return f"TORCH_SYMMMEM={symm_backend} selects a symmetric-memory backend other than CUDA"
    return None


def fits(x: torch.Tensor, device: torch.device, limit_bytes: int) -> bool:
    """Whether ``x`` suits the one-shot kernel: on ``device``, bf16/fp32, contiguous, 1..``limit_bytes`` bytes,
    size and storage offset multiples of 16 bytes. Depends only on what every rank shares (shape, dtype, strides),
    so all ranks take the same path."""
    if x.device != device or x.dtype not in SUPPORTED_DTYPES or not x.is_contiguous():
        return False
    itemsize = x.element_size()
    nbytes = x.numel() * itemsize
    return (
        0 < nbytes <= limit_bytes and nbytes % _ALIGN == 0 and (x.storage_offset() * itemsize) % _ALIGN == 0
    )


class CustomAllReduce:
    """Sum small CUDA tensors over the TP group through a symmetric buffer of ``max_bytes``.

    Create it on every rank after the NCCL process group exists (collective). ``enabled`` is the same on all ranks;
    when it is false ``reason`` says why and :meth:`should_use` is always false. :meth:`all_reduce` returns a new
    tensor (``x`` is left unchanged) and may be captured in a CUDA graph: the buffer and the peers' mappings are
    fixed, and the output is an ordinary allocation (the graph's pool during capture).
    """

    def __init__(
        self,
        device: torch.device,
        max_bytes: int = DEFAULT_MAX_BYTES,
        one_shot_max_bytes: int = ONE_SHOT_MAX_BYTES,
        group: Any = None,
    ) -> None:
        self.enabled = False
        self.fused_enabled = False  # all_reduce_add_rms_norm may be used (its own self-tests passed)
        self.reason: str | None = None
        self.device = device
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self.max_bytes = max(_ALIGN, (max_bytes // _ALIGN) * _ALIGN)
        self.limit_bytes = min(one_shot_max_bytes, self.max_bytes)
        self._fused_rows = 0  # rows one fused call may carry: FLAG_ROWS once allocated
        self.group_name = ""
        self._buffer: torch.Tensor | None = None
        self._handle: Any = None
        self._views: dict[torch.dtype, torch.Tensor] = {}
        # The fused kernel's state: this rank's flags (int32 [world, FLAG_ROWS]) and call count per row.
        self._flags: torch.Tensor | None = None
        self._epochs: torch.Tensor | None = None  # int32 [FLAG_ROWS]
        self._inbox_ptrs: torch.Tensor | None = None  # int64 [world]: every rank's inboxes as mapped here
        self._flag_ptrs: torch.Tensor | None = None  # int64 [world]: every rank's flags as mapped here
        self._fused: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
        self._op: Callable[..., torch.Tensor] | None = None
        self._copy_op: Callable[..., torch.Tensor] | None = None
        self._test: dict[str, Any] = {}
        self._symm_mem: Any = None
        steps: list[tuple[str, Callable[[], str | None]]] = [
            ("checks", self._check),
            ("allocation", self._allocate),
            ("rendezvous", self._rendezvous),
            ("eager self-test", self._test_eager),
            ("graph capture", self._capture),
            ("graph self-test", self._test_graph),
        ]
        fused_steps: list[tuple[str, Callable[[], str | None]]] = [
            ("fused eager self-test", self._test_fused_eager),
            ("fused graph self-test", self._test_fused_graph),
        ]
        try:
            if not self._run_steps(steps):
                return
            self.enabled = True
            self.fused_enabled = self._run_steps(fused_steps, fused_only=True)
            logger.info(
                "Custom all-reduce on (one-shot through symmetric memory, %d ranks, tensors up to %d KiB; "
                "fused with the residual add + RMSNorm: %s).",
                self.world_size,
                self.limit_bytes >> 10,
                "yes" if self.fused_enabled else "no",
            )
        except _Hung as e:
            # Keep everything alive: freeing symmetric memory synchronizes the device, which would block for ever.
            _ABANDONED.append((self._test, self._buffer, self._handle))
            self._test, self._buffer, self._handle = {}, None, None
            raise CustomAllReduceHung(
                f"Custom all-reduce self-test hung ({e}); this process cannot recover the GPU. "
                "Restart with --disable-custom-all-reduce to use NCCL for all all-reduces."
            ) from e
        finally:
            self._test.clear()
            if not self.enabled:
                self.close()

    # ----------------------------------------------------------------------------------------------- public

    def should_use(self, x: torch.Tensor) -> bool:
        """Whether :meth:`all_reduce` takes ``x`` (the same answer on every rank for the same shape and dtype)."""
        return self.enabled and fits(x, self.device, self.limit_bytes)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the ranks as a new tensor. ``x``: contiguous bf16/fp32 on this device, at most
        ``max_bytes``, size and storage offset multiples of 16 bytes (see :meth:`should_use`)."""
        assert self._op is not None
        symm = self._views[x.dtype][: x.numel()].view(x.shape)
        if self._copy_op is not None and x.data_ptr() % _ALIGN == 0:
            return self._copy_op(symm, x, "sum", self.group_name)
        symm.copy_(x)
        return self._op(symm, "sum", self.group_name)

    def should_fuse(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        """Whether :meth:`all_reduce_add_rms_norm` takes ``x`` [M, H] with ``residual`` (the same answer on every rank
        for the same shapes and dtypes)."""
        return (
            self.fused_enabled
            and x.dim() == 2
            and 0 < x.shape[0] <= self._fused_rows
            and fits(x, self.device, self.limit_bytes)
            and residual.shape == x.shape
            and residual.dtype == x.dtype
            and residual.is_contiguous()
        )

    def all_reduce_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fused_add_rms_norm(sum of x over the ranks, residual, weight, eps)``: ``(normed, x summed + residual)``
        as new tensors, in one kernel (see :meth:`should_fuse`). Capturable in a CUDA graph."""
        assert self._fused is not None and self._inbox_ptrs is not None and self._flag_ptrs is not None
        assert self._epochs is not None
        return self._fused(
            x,
            residual,
            weight,
            eps,
            self._inbox_ptrs,
            self._flag_ptrs,
            self._epochs,
            self.limit_bytes // x.element_size(),
            self.rank,
            self.world_size,
        )

    def close(self) -> None:
        """Drop the buffer and the peers' mappings (call before the process group goes); idempotent."""
        self.enabled = False
        self.fused_enabled = False
        self._fused = None
        self._flags = self._epochs = self._inbox_ptrs = self._flag_ptrs = None
        self._views.clear()
        self._handle = None
        self._buffer = None
        self._op = self._copy_op = None

    # ------------------------------------------------------------------------------------------ construction

    def _run_steps(self, steps: list[tuple[str, Callable[[], str | None]]], fused_only: bool = False) -> bool:
        """Run the steps in order on every rank, agreeing on each one's outcome; False once one failed anywhere
        (``_Hung`` propagates: the caller gives up on the GPU stream). ``fused_only``: a failure turns off only the
        fused all-reduce + RMSNorm."""
        for name, step in steps:
            try:
                reason = step()
            except _Hung:
                raise
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            if not self._agree(name, reason, fused_only):
                return False
        return True

    def _agree(self, step: str, reason: str | None, fused_only: bool = False) -> bool:
        """NCCL MIN of the ranks' success flags; on failure, gather the reasons, log them once and disable (the whole
        custom all-reduce, or with ``fused_only`` its fused all-reduce + RMSNorm)."""
        flag = torch.tensor([0 if reason else 1], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        if int(flag.item()) == 1:
            return True
        reasons: list[Any] = [None] * self.world_size
        dist.all_gather_object(reasons, reason, group=self.group)
        reason_text = f"{step} failed: " + "; ".join(
            f"rank {r}: {text}" for r, text in enumerate(reasons) if text
        )
        if fused_only:
            if self.rank == 0:
                logger.warning(
                    "Fused all-reduce + RMSNorm off, the layers all-reduce then norm (%s).", reason_text
                )
            return False
        self.reason = reason_text
        if self.rank == 0:
            logger.warning("Custom all-reduce off, all-reduces use NCCL (%s).", self.reason)
        else:
            logger.debug("Custom all-reduce off (%s).", self.reason)
        return False

    def _check(self) -> str | None:
        reason = unavailable_reason(self.device, self.world_size, dist.get_backend(self.group))
        if reason:
            return reason
        if self.device.index is None:
            return "device has no index"
        if torch.cuda.get_device_capability(self.device) < (8, 0):
            return "the one-shot kernel needs compute capability 8.0 or newer"
        # Multicast (NVLS) is never used here; without this the rendezvous would create a multicast object.
        os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
        self._symm_mem = importlib.import_module("torch.distributed._symmetric_memory")

        ops = torch.ops.symm_mem
        if not hasattr(ops, "one_shot_all_reduce"):
            return f"torch {torch.__version__} has no torch.ops.symm_mem.one_shot_all_reduce"
        self._op = ops.one_shot_all_reduce.default
        self._copy_op = (
            ops.one_shot_all_reduce_copy.default if hasattr(ops, "one_shot_all_reduce_copy") else None
        )
        self.group_name = str(getattr(self.group, "group_name", "") or "")
        if not self.group_name:
            return "the process group has no name"
        return None

    def _peer_check(self) -> str | None:
        """Every peer GPU must be another GPU, reachable peer-to-peer where this process can see it (collective)."""
        own: str | None = None
        local: dict[str, int] = {}
        try:
            own = str(torch.cuda.get_device_properties(self.device).uuid)
            local = {
                str(torch.cuda.get_device_properties(i).uuid): i for i in range(torch.cuda.device_count())
            }
        except Exception:
            own = None  # no UUIDs in this torch: the self-test decides
        uuids: list[Any] = [None] * self.world_size
        dist.all_gather_object(uuids, own, group=self.group)
        if own is None:
            return None
        for r, uuid in enumerate(uuids):
            if r == self.rank or uuid is None:
                continue
            if uuid == own:
                return f"rank {r} uses the same GPU"
            index = local.get(uuid)
            if index is not None and not torch.cuda.can_device_access_peer(self.device.index, index):
                return f"GPU {self.device.index} cannot access rank {r}'s GPU ({index}) peer-to-peer"
        return None

    def _allocate(self) -> str | None:
        reason = self._peer_check()
        if reason:
            return reason
        from torch._C._distributed_c10d import _SymmetricMemory

        from inferd.kernels import triton_allreduce

        # [one-shot kernel's buffer | fused kernel's inboxes: 2 x world x limit_bytes | flags: int32 world x FLAG_ROWS]
        flag_bytes = self.world_size * triton_allreduce.FLAG_ROWS * 4
        total = self.max_bytes + 2 * self.world_size * self.limit_bytes + flag_bytes
        try:  # direct allocation: freed for real on close (no memory pool keeping a stale rendezvous)
            buffer = _SymmetricMemory.empty_strided_p2p((total,), (1,), torch.uint8, self.device)
        except (AttributeError, TypeError):
            buffer = self._symm_mem.empty(total, dtype=torch.uint8, device=self.device)
        self._buffer = buffer
        get_backend = getattr(self._symm_mem, "get_backend", None)
        backend = str(get_backend(self.device) if get_backend is not None else None)
        if "NVSHMEM" in backend.upper() or "NCCL" in backend.upper():
            return f"symmetric memory uses the {backend} backend, not CUDA"
        self._views = {dtype: buffer[: self.max_bytes].view(dtype) for dtype in SUPPORTED_DTYPES}
        self._flags = buffer[total - flag_bytes :].view(torch.int32)
        self._flags.zero_()  # before the agreement that follows: no peer pushes to it until every rank is set up
        self._epochs = torch.zeros(triton_allreduce.FLAG_ROWS, dtype=torch.int32, device=self.device)
        self._fused = triton_allreduce.allreduce_add_rms_norm
        self._fused_rows = triton_allreduce.FLAG_ROWS
        self._test = _make_test_tensors(self.device, self.rank, self.world_size)
        torch.cuda.synchronize(self.device)
        return None

    def _rendezvous(self) -> str | None:
        symm_mem = self._symm_mem
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None and not hasattr(
            enable, "__deprecated__"
        ):  # older torch needs it; newer deprecates it
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    enable(self.group_name)
            except Exception as e:
                logger.debug("enable_symm_mem_for_group failed (%s); trying the rendezvous anyway", e)
        # A peer that failed half-way through leaves this rank waiting on the store: give up after a minute.
        with _store_timeout(_RENDEZVOUS_STORE_TIMEOUT_S):
            handle = symm_mem.rendezvous(self._buffer, self.group_name)
        if handle is None:
            return "rendezvous returned no handle (the buffer is not symmetric memory)"
        seen = (getattr(handle, "rank", self.rank), getattr(handle, "world_size", self.world_size))
        if seen != (self.rank, self.world_size):
            return f"rendezvous saw rank {seen[0]} of {seen[1]}"
        self._handle = handle
        # Every rank's inboxes and flags as mapped in this process (same offsets in every rank's buffer).
        assert self._buffer is not None
        ptrs = [int(p) for p in handle.buffer_ptrs]
        base = self._buffer.data_ptr() - ptrs[self.rank]
        inboxes = base + self.max_bytes
        flags = inboxes + 2 * self.world_size * self.limit_bytes
        self._inbox_ptrs = torch.tensor([p + inboxes for p in ptrs], dtype=torch.int64, device=self.device)
        self._flag_ptrs = torch.tensor([p + flags for p in ptrs], dtype=torch.int64, device=self.device)
        torch.cuda.synchronize(self.device)
        return None

    # The self-tests run the same kernels and NCCL calls on every rank whatever they find, and only then compare:
    # a rank that stopped early would leave its peers waiting in a kernel or pair up mismatched NCCL calls.

    def _test_eager(self) -> str | None:
        cases = self._test["eager"]
        outs = [self.all_reduce(x) for x, _, _ in cases]
        _wait(self.device, "the eager one-shot all-reduce")
        refs = [x.clone() for x, _, _ in cases]
        for ref in refs:
            dist.all_reduce(ref, group=self.group)
        for (x, original, expected), out, ref in zip(cases, outs, refs):
            if not torch.equal(x, original):
                return "the input was modified"
            if not (torch.equal(out, ref) and torch.equal(out, expected)):
                return f"eager result for shape {tuple(x.shape)} {x.dtype} differs from NCCL's"
        return None

    def _capture(self) -> str | None:
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            outs = [self.all_reduce(x) for x in self._test["graph_inputs"]]
        self._test["graph"] = (graph, outs)
        return None

    def _test_graph(self) -> str | None:
        graph, outs = self._test["graph"]
        failures: list[str] = []
        for k in (1, 2):  # new inputs each replay: the graph must read the static inputs, not stale copies
            cases = self._test["graph_cases"][k]
            for x, (fill, _) in zip(self._test["graph_inputs"], cases):
                x.copy_(fill)
            graph.replay()
            _wait(self.device, "the CUDA-graph one-shot all-reduce")
            results = [out.clone() for out in outs]
            refs = [fill.clone() for fill, _ in cases]
            for ref in refs:
                dist.all_reduce(ref, group=self.group)
            for (fill, expected), got, ref in zip(cases, results, refs):
                if not (torch.equal(got, ref) and torch.equal(got, expected)):
                    failures.append(
                        f"graph replay {k} result for shape {tuple(fill.shape)} differs from NCCL's"
                    )
        return failures[0] if failures else None

    def _fused_cases(
        self, k: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x, residual, weight, expected new residual, expected normed) per shape; exact small integers except the
        norm, whose expectation is the pure-torch one on the exact sum."""
        from inferd.kernels import reference

        cases = []
        for shape, dtype in (
            ((1, 4096), torch.bfloat16),
            ((7, 1024), torch.bfloat16),
            ((3, 1000), torch.float32),
        ):
            x = _pattern(shape, dtype, self.device, self.rank, k)
            residual = _pattern(shape, dtype, self.device, 0, k + 3)  # the same on every rank, as in a model
            weight = (torch.arange(shape[1], device=self.device).remainder(5) + 1).to(dtype)
            summed = (_expected(shape, dtype, self.device, self.world_size, k).float() + residual.float()).to(
                dtype
            )
            cases.append((x, residual, weight, summed, reference.rms_norm(summed, weight, 1e-6)))
        return cases

    @staticmethod
    def _check_fused(
        got: tuple[torch.Tensor, torch.Tensor], case: tuple[torch.Tensor, ...], what: str
    ) -> str | None:
        x, _, _, summed, normed = case
        out, res_out = got
        if not torch.equal(res_out, summed):
            return f"{what}: the summed residual for shape {tuple(x.shape)} {x.dtype} is wrong"
        tol = 2e-2 if x.dtype == torch.bfloat16 else 1e-5
        if not torch.allclose(out.float(), normed.float(), rtol=tol, atol=tol):
            return f"{what}: the normed output for shape {tuple(x.shape)} {x.dtype} is wrong"
        return None

    def _test_fused_eager(self) -> str | None:
        failures: list[str] = []
        for k in (0, 1):  # twice: even and odd epochs use different inboxes
            cases = self._fused_cases(k)
            outs = [self.all_reduce_add_rms_norm(x, r, w, 1e-6) for x, r, w, _, _ in cases]
            _wait(self.device, "the fused all-reduce + RMSNorm")
            for case, got in zip(cases, outs):
                reason = self._check_fused(got, case, f"eager call {k}")
                if reason:
                    failures.append(reason)
        return failures[0] if failures else None

    def _test_fused_graph(self) -> str | None:
        inputs = [(x.clone(), r.clone(), w) for x, r, w, _, _ in self._fused_cases(0)]
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            outs = [self.all_reduce_add_rms_norm(x, r, w, 1e-6) for x, r, w in inputs]
        failures: list[str] = []
        for k in (2, 3):
            cases = self._fused_cases(k)
            for (x, r, _), case in zip(inputs, cases):
                x.copy_(case[0])
                r.copy_(case[1])
            graph.replay()
            _wait(self.device, "the CUDA-graph fused all-reduce + RMSNorm")
            for case, got in zip(cases, outs):
                reason = self._check_fused(got, case, f"graph replay {k}")
                if reason:
                    failures.append(reason)
        del graph
        return failures[0] if failures else None


def _pattern(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, rank: int, k: int
) -> torch.Tensor:
    """Small integers, exact in bf16 whatever the summation order: ``i % 13 + (rank + 1) * (k + 1)``."""
    base = torch.arange(math.prod(shape), device=device).remainder(13).reshape(shape)
    return (base + (rank + 1) * (k + 1)).to(dtype)


def _expected(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, world_size: int, k: int
) -> torch.Tensor:
    base = torch.arange(math.prod(shape), device=device).remainder(13).reshape(shape)
    return (world_size * base + (k + 1) * world_size * (world_size + 1) // 2).to(dtype)


def _make_test_tensors(device: torch.device, rank: int, world_size: int) -> dict[str, Any]:
    eager_shapes = [
        ((1, 4096), torch.bfloat16),
        ((7, 4096), torch.bfloat16),
        ((64, 4096), torch.bfloat16),  # 512 KiB
        ((2, 1000), torch.bfloat16),
        ((1, 8), torch.float32),
    ]
    graph_shapes = [((1, 4096), torch.bfloat16), ((8, 4096), torch.bfloat16)]
    eager = []
    for shape, dtype in eager_shapes:
        x = _pattern(shape, dtype, device, rank, 0)
        eager.append((x, x.clone(), _expected(shape, dtype, device, world_size, 0)))
    return {
        "eager": eager,
        "graph_inputs": [_pattern(s, d, device, rank, 0) for s, d in graph_shapes],
        "graph_cases": {
            k: [
                (_pattern(s, d, device, rank, k), _expected(s, d, device, world_size, k))
                for s, d in graph_shapes
            ]
            for k in (1, 2)
        },
    }


def _wait(device: torch.device, what: str) -> None:
    """Wait for the work queued so far on the current stream; raise ``_Hung`` after ``_KERNEL_TIMEOUT_S``."""
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    deadline = time.monotonic() + _KERNEL_TIMEOUT_S
    while not event.query():
        if time.monotonic() > deadline:
            raise _Hung(f"{what} did not finish within {_KERNEL_TIMEOUT_S:.0f} s")
        time.sleep(0.0005)


class _store_timeout:
    """Lower the default store's timeout for a block (best effort; restored after)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.store: Any = None
        self.old: Any = None

    def __enter__(self) -> None:
        try:
            store = dist.distributed_c10d._get_default_store()
            self.old = store.timeout
            store.set_timeout(datetime.timedelta(seconds=self.seconds))
            self.store = store
        except Exception:
            self.store = None

    def __exit__(self, *exc: object) -> None:
        if self.store is not None:
            try:
                self.store.set_timeout(self.old)
            except Exception:
                pass
