"""The in-kernel half of programmatic dependent launch (see ``kernels/pdl.py`` for when it is on)."""

from __future__ import annotations

import triton
import triton.language as tl


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
