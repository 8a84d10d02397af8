"""Programmatic dependent launch (PDL) for the Triton kernels of small decode steps (Hopper and newer GPUs).

A kernel launched with PDL may start while the kernel before it in the stream is still finishing: its programs
become resident and wait in ``triton_pdl.wait`` (``griddepcontrol.wait``: the previous kernel has completed and its
writes are visible) before touching any memory, and later let the next kernel launch the same way
(``triton_pdl.release``, ``griddepcontrol.launch_dependents``). Inside a CUDA graph of a decode step (~300 small
kernels at batch 1) this hides most of the launch gap between consecutive kernels. Every kernel launched with
:func:`launch_kwargs` must call ``wait`` (or ``wait_and_release``) first, before any load or store. This module is
the host-side switch and imports no Triton (the CUDA-graph runner uses it); the in-kernel calls live in
``kernels/triton_pdl.py``.

It is used only while :func:`active` is on, which the CUDA-graph runner turns on for decode graphs of at most
``MAX_GRAPH_BATCH`` sequences: measured on an H100 (Qwen3-0.6B), PDL takes batch-1 decode from 1.23 to 1.10 ms per
token and batch 8 from 1.66 to 1.47 ms (batch 32/64: -1.5%/-5%), but the throughput workload ran 2-3% slower with
it on everywhere or up to batch 64 (third session), so it stays on only where the skinny GEMM runs (<= 16 rows;
batch 16 1.45 -> 1.36 ms with the bound raised from 8 to 16, throughput unchanged: sixth session).
``INFERD_PDL=0`` turns it off; it is off on CPUs, in the Triton interpreter and on GPUs before compute capability 9.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import torch

MAX_GRAPH_BATCH = 16  # decode graphs up to this batch size launch their Triton kernels with PDL

_active = False


@contextlib.contextmanager
def active(on: bool = True) -> Iterator[None]:
    """Launch this thread's Triton kernels with PDL inside the block (where the device supports it)."""
    global _active
    previous, _active = _active, on
    try:
        yield
    finally:
        _active = previous


@functools.lru_cache(maxsize=8)
def enabled(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("INFERD_PDL", "1") == "0":
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def launch_kwargs(device: torch.device) -> dict[str, Any]:
    """Extra launch arguments: ``USE_PDL`` for the kernel (a constexpr) and Triton's ``launch_pdl`` option."""
    if _active and enabled(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}
