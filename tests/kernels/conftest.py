"""Kernel tests run the Triton kernels through the interpreter on machines without CUDA.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, hence at conftest import time.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
