"""The kernels every layer calls. The backend is chosen here, once per process, by the model runner
(:func:`select_backend`); call sites never branch on it.

Each function has the contract written in ``kernels/reference.py``; ``triton_attention.py`` / ``triton_ops.py`` /
``triton_gemv.py`` / ``triton_fused.py`` / ``triton_sampling.py`` implement the same signatures for CUDA GPUs.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType

from inferd.kernels import reference

_NAMES = (
    "store_kv_cache",
    "paged_attention",
    "rms_norm",
    "fused_add_rms_norm",
    "silu_and_mul",
    "rotary_embedding",
    "linear",
    "silu_and_mul_linear",
    "add_rms_norm_linear",
    "qk_norm_rope_store",
    "temperature_race_sample",
    "decode_advance",
)

store_kv_cache = reference.store_kv_cache
paged_attention = reference.paged_attention
rms_norm = reference.rms_norm
fused_add_rms_norm = reference.fused_add_rms_norm
silu_and_mul = reference.silu_and_mul
rotary_embedding = reference.rotary_embedding
linear = reference.linear
silu_and_mul_linear = reference.silu_and_mul_linear
add_rms_norm_linear = reference.add_rms_norm_linear
qk_norm_rope_store = reference.qk_norm_rope_store
temperature_race_sample = reference.temperature_race_sample
decode_advance = reference.decode_advance
backend = "torch"


def select_backend(device_type: str) -> str:
    """Use the Triton kernels on CUDA and the pure-torch ones elsewhere.

    ``INFERD_KERNEL_BACKEND=torch`` forces the pure-torch kernels (e.g. to compare against them on a GPU).
    With Triton, ``linear`` sends CUDA batches of at most 16 rows (``INFERD_SKINNY_MAX_M``) to the skinny GEMM and
    the rest to cuBLAS;
    ``silu_and_mul_linear`` (the MLP's activation + down projection) runs as one skinny-GEMM kernel where ``linear``
    would use the skinny GEMM, else as ``silu_and_mul`` then ``linear``; ``add_rms_norm_linear`` (residual add +
    RMSNorm + the projection after it) likewise, else as ``fused_add_rms_norm`` then ``linear``.
    ``INFERD_SKINNY_GEMM=0`` keeps every ``linear`` on cuBLAS and ``silu_and_mul_linear`` /
    ``add_rms_norm_linear`` as the backend's ``silu_and_mul`` / norm followed by ``linear`` (two kernels).
    ``INFERD_FUSED_QK_ROPE=0`` replaces the fused attention prologue (``qk_norm_rope_store``) by the backend's
    separate norm, rotary and cache-write kernels.
    """
    global backend
    wanted = os.environ.get("INFERD_KERNEL_BACKEND", "auto").lower()
    if wanted not in ("auto", "torch", "triton"):
        raise ValueError(f"INFERD_KERNEL_BACKEND must be auto, torch or triton; got {wanted!r}.")
    if wanted == "triton" or (wanted == "auto" and device_type == "cuda"):
        from inferd.kernels import triton_attention, triton_fused, triton_gemv, triton_ops, triton_sampling

        _install(triton_attention, ("store_kv_cache", "paged_attention"))
        _install(
            triton_ops,
            ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding", "decode_advance"),
        )
        skinny = os.environ.get("INFERD_SKINNY_GEMM", "1") != "0"
        globals()["linear"] = triton_gemv.dispatch_linear if skinny else reference.linear
        fused_mlp = triton_gemv.dispatch_silu_and_mul_linear if skinny else _unfused_silu_and_mul_linear
        globals()["silu_and_mul_linear"] = fused_mlp
        fused_norm = triton_gemv.dispatch_add_rms_norm_linear if skinny else _unfused_add_rms_norm_linear
        globals()["add_rms_norm_linear"] = fused_norm
        _install(triton_fused, ("qk_norm_rope_store",))
        _install(triton_sampling, ("temperature_race_sample",))
        backend = "triton"
    else:
        _install(reference, _NAMES)
        backend = "torch"
    if os.environ.get("INFERD_FUSED_QK_ROPE", "1") == "0":
        globals()["qk_norm_rope_store"] = _unfused_qk_norm_rope_store
    return backend


# ``qk_norm_rope_store`` as the installed backend's separate kernels (for comparisons: INFERD_FUSED_QK_ROPE=0).
_unfused_qk_norm_rope_store = functools.partial(
    reference.qk_norm_rope_store_separately, sys.modules[__name__]
)

# ``silu_and_mul_linear`` as the installed backend's ``silu_and_mul`` then ``linear`` (INFERD_SKINNY_GEMM=0).
_unfused_silu_and_mul_linear = functools.partial(
    reference.silu_and_mul_linear_separately, sys.modules[__name__]
)

# ``add_rms_norm_linear`` as the installed backend's norm kernel then ``linear`` (INFERD_SKINNY_GEMM=0).
_unfused_add_rms_norm_linear = functools.partial(
    reference.add_rms_norm_linear_separately, sys.modules[__name__]
)


def _install(module: ModuleType, names: tuple[str, ...]) -> None:
    for name in names:
        globals()[name] = getattr(module, name)


__all__ = [
    "add_rms_norm_linear",
    "decode_advance",
    "fused_add_rms_norm",
    "linear",
    "paged_attention",
    "qk_norm_rope_store",
    "rms_norm",
    "rotary_embedding",
    "select_backend",
    "silu_and_mul",
    "silu_and_mul_linear",
    "store_kv_cache",
    "temperature_race_sample",
]
