"""The kernels every layer calls. The backend is chosen here, once; call sites never branch on it.

Each function has the contract written in ``kernels/reference.py``.
"""

from __future__ import annotations

from inferd.kernels import reference as _backend

store_kv_cache = _backend.store_kv_cache
paged_attention = _backend.paged_attention
rms_norm = _backend.rms_norm
fused_add_rms_norm = _backend.fused_add_rms_norm
silu_and_mul = _backend.silu_and_mul
rotary_embedding = _backend.rotary_embedding

__all__ = [
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv_cache",
]
