"""Programmatic dependent launch (PDL) for the Triton kernels of a step (Hopper and newer GPUs).

A kernel launched with PDL may start while the kernel before it in the stream is still finishing: its programs
become resident and wait in :func:`wait_and_release` (``griddepcontrol.wait``: the previous kernel has completed and
its writes are visible) before touching any memory, and later allow the next kernel to launch the same way
(:func:`release`, ``griddepcontrol.launch_dependents``). Inside a CUDA graph of a decode step (~300 small kernels at batch 1) this
hides most of the launch gap between consecutive kernels. Every kernel launched with :func:`launch_kwargs` must call
:func:`wait` (or :func:`wait_and_release`) first, before any load or store.

``INFERD_PDL=0`` turns it off; it is off on CPUs, in the Triton interpreter and on GPUs before compute capability 9.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton
import triton.language as tl


@functools.lru_cache(maxsize=8)
def enabled(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("INFERD_PDL", "1") == "0":
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def launch_kwargs(device: torch.device) -> dict[str, Any]:
    """Extra launch arguments: ``USE_PDL`` for the kernel (a constexpr) and Triton's ``launch_pdl`` option."""
    if enabled(device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


@triton.jit
def wait(USE_PDL: tl.constexpr):
    """First statement of a PDL kernel: wait until the previous kernel has completed and its writes are visible."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def release(USE_PDL: tl.constexpr):
    """Let the next kernel launch (its programs then wait in :func:`wait`). Kernels with a long main loop call it
    after the loop, so the next kernel's programs do not sit on the SMs while this one streams memory."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def wait_and_release(USE_PDL: tl.constexpr):
    """Both, for short kernels: wait for the previous kernel, then let the next one launch."""
    wait(USE_PDL)
    release(USE_PDL)
