"""``qk_norm_rope_store``: the fused attention prologue (q/k RMSNorm, rotary, KV-cache write) equals the separate
``rms_norm`` → ``rotary_embedding`` → ``store_kv_cache`` sequence the model ran before, and the Triton kernel equals
the reference (interpreter: float32, rel. error <= 1e-5, and bf16, <= 1e-2; GPU: bf16 at Qwen3-0.6B / Llama-3
shapes, <= 1e-2), through both of its launches (per (token, head), and tiled: forced on small inputs through
``TILED_MIN_TOKENS``).

Caches start as NaN, so a slot written where the reference does not write (or not written where it does) fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import triton

if not torch.cuda.is_available():
    os.environ.setdefault(
        "TRITON_INTERPRET", "1"
    )  # before the kernel modules define their @triton.jit functions

from inferd import kernels
from inferd.kernels import reference, triton_attention, triton_fused, triton_ops
from inferd.layers.rotary_embedding import compute_cos_sin_cache

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class Case:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rot_dim: int
    is_neox: bool = True
    q_norm: bool = True
    k_norm: bool = True
    block_size: int = 16
    max_pos: int = 64
    rope: tuple[tuple[str, object], ...] = (("rope_type", "default"), ("rope_theta", 10000.0))


def make_inputs(case: Case, num_tokens: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """A strided qkv (a column slice of a wider buffer), random positions, slots with padding (-1), NaN caches."""
    g = torch.Generator().manual_seed(seed)
    hq, hkv, d = case.num_heads, case.num_kv_heads, case.head_dim
    width = (hq + 2 * hkv) * d
    qkv = (2 * torch.randn(num_tokens, width + 8, generator=g))[:, 8:].to(dtype)  # row stride width + 8
    num_blocks = max(4, -(-2 * num_tokens // case.block_size))
    slots = torch.randperm(num_blocks * case.block_size, generator=g)[:num_tokens]
    slots[1 + num_tokens // 2 :: 3] = -1  # padding rows (CUDA-graph style)
    if num_tokens > 2:
        slots[-1] = -1
    k_cache = torch.full((num_blocks, case.block_size, hkv, d), float("nan"), dtype=dtype)
    inputs = {
        "qkv": qkv,
        "positions": torch.randint(0, case.max_pos, (num_tokens,), generator=g),
        "cos_sin_cache": compute_cos_sin_cache(case.max_pos, case.rot_dim, dict(case.rope)),
        "q_norm_weight": (1 + 0.2 * torch.randn(d, generator=g)).to(dtype) if case.q_norm else None,
        "k_norm_weight": (1 + 0.2 * torch.randn(d, generator=g)).to(dtype) if case.k_norm else None,
        "eps": 1e-6,
        "k_cache": k_cache,
        "v_cache": k_cache.clone(),
        "slot_mapping": slots.to(torch.int64),
        "num_heads": hq,
        "num_kv_heads": hkv,
        "head_dim": d,
        "is_neox": case.is_neox,
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def clone_caches(inputs: dict) -> dict:
    return {**inputs, "k_cache": inputs["k_cache"].clone(), "v_cache": inputs["v_cache"].clone()}


def previous_sequence(a: dict) -> torch.Tensor:
    """What DecoderAttention + Attention ran before the fusion, with the reference kernels."""
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    q, k, v = a["qkv"].split([hq * d, hkv * d, hkv * d], dim=-1)
    if a["q_norm_weight"] is not None:
        q = reference.rms_norm(q.reshape(-1, d), a["q_norm_weight"], a["eps"]).view(-1, hq * d)
    if a["k_norm_weight"] is not None:
        k = reference.rms_norm(k.reshape(-1, d), a["k_norm_weight"], a["eps"]).view(-1, hkv * d)
    q3, k3 = reference.rotary_embedding(
        a["positions"], q.unflatten(-1, (hq, d)), k.unflatten(-1, (hkv, d)), a["cos_sin_cache"], a["is_neox"]
    )
    reference.store_kv_cache(k3, v.unflatten(-1, (hkv, d)), a["k_cache"], a["v_cache"], a["slot_mapping"])
    return q3.flatten(-2)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the output"
    assert out.shape == ref.shape and out.dtype == ref.dtype
    diff = (out.double() - ref.double()).norm()
    return (diff / ref.double().norm().clamp_min(1e-30)).item()


def check_against_reference(fn, a: dict, tol: float) -> None:
    """``fn`` (a qk_norm_rope_store) against the reference: q and the written cache slots within ``tol``,
    the same slots written, qkv unchanged."""
    qkv_before = a["qkv"].clone()
    ref_args, out_args = clone_caches(a), clone_caches(a)
    ref_q = reference.qk_norm_rope_store(**ref_args)
    out_q = fn(**out_args)
    assert torch.equal(a["qkv"], qkv_before), "qkv must not be modified"
    assert rel_err(out_q, ref_q) <= tol
    for name in ("k_cache", "v_cache"):
        ref_c, out_c = ref_args[name], out_args[name]
        written = ~torch.isnan(ref_c)
        assert torch.equal(written, ~torch.isnan(out_c)), f"{name}: written slots differ from the reference"
        assert written.any() or not (a["slot_mapping"] >= 0).any()
        if written.any():
            assert rel_err(out_c[written], ref_c[written]) <= tol, name


CPU_CASES = {
    "qwen3-like": Case(4, 2, 32, 32),
    "llama-like": Case(4, 2, 32, 32, q_norm=False, k_norm=False),
    "mha-q-norm-only": Case(2, 2, 16, 16, k_norm=False),
    "partial-rot": Case(4, 1, 32, 16),
    "gptj": Case(4, 2, 32, 32, is_neox=False),
    "gptj-partial-no-norm": Case(2, 1, 24, 8, is_neox=False, q_norm=False, k_norm=False, block_size=4),
    "odd-head-dim": Case(3, 1, 40, 40, block_size=1),
}


# ----------------------------------------------------------------------------------------- reference (CPU)


@pytest.mark.parametrize("num_tokens", [1, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(CPU_CASES))
def test_reference_equals_previous_sequence(name: str, dtype: torch.dtype, num_tokens: int) -> None:
    a = make_inputs(CPU_CASES[name], num_tokens, dtype, "cpu")
    qkv_before = a["qkv"].clone()
    prev_args, ref_args = clone_caches(a), clone_caches(a)
    prev_q = previous_sequence(prev_args)
    ref_q = reference.qk_norm_rope_store(**ref_args)
    assert torch.equal(a["qkv"], qkv_before)
    assert ref_q.shape == (num_tokens, a["num_heads"] * a["head_dim"]) and ref_q.dtype == dtype
    torch.testing.assert_close(ref_q, prev_q, rtol=1e-6, atol=1e-6)
    for name_c in ("k_cache", "v_cache"):
        torch.testing.assert_close(ref_args[name_c], prev_args[name_c], rtol=1e-6, atol=1e-6, equal_nan=True)
    valid = a["slot_mapping"] >= 0
    written = ~torch.isnan(ref_args["v_cache"]).flatten(0, 1).any(-1).any(-1)  # [num_slots]
    assert written.nonzero().flatten().tolist() == sorted(a["slot_mapping"][valid].tolist())


def test_unfused_backend_composition_equals_reference() -> None:
    a = make_inputs(CPU_CASES["qwen3-like"], 5, torch.float32, "cpu")
    ref_args, out_args = clone_caches(a), clone_caches(a)
    ref_q = reference.qk_norm_rope_store(**ref_args)
    out_q = kernels._unfused_qk_norm_rope_store(**out_args)  # the reference backend's separate kernels
    assert torch.equal(out_q, ref_q)
    assert torch.equal(out_args["k_cache"].nan_to_num(), ref_args["k_cache"].nan_to_num())
    assert torch.equal(out_args["v_cache"].nan_to_num(), ref_args["v_cache"].nan_to_num())


def test_rejects_bad_shapes() -> None:
    a = make_inputs(CPU_CASES["qwen3-like"], 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="qkv must be"):
        reference.qk_norm_rope_store(**{**a, "num_kv_heads": 1})
    with pytest.raises(ValueError, match="slot_mapping"):
        reference.qk_norm_rope_store(**{**a, "slot_mapping": a["slot_mapping"][:2]})


@pytest.mark.parametrize(
    "env,backend", [({}, "triton"), ({"INFERD_FUSED_QK_ROPE": "0"}, "triton"), ({}, "torch")]
)
def test_select_backend_installs_fused_kernel(
    monkeypatch: pytest.MonkeyPatch, env: dict, backend: str
) -> None:
    monkeypatch.setenv("INFERD_KERNEL_BACKEND", backend)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        kernels.select_backend("cuda")
        if env:
            expected = kernels._unfused_qk_norm_rope_store
        else:
            expected = (
                triton_fused.qk_norm_rope_store if backend == "triton" else reference.qk_norm_rope_store
            )
        assert kernels.qk_norm_rope_store is expected
    finally:
        monkeypatch.delenv("INFERD_KERNEL_BACKEND")
        monkeypatch.delenv("INFERD_FUSED_QK_ROPE", raising=False)
        kernels.select_backend("cpu")
    assert kernels.qk_norm_rope_store is reference.qk_norm_rope_store


# ----------------------------------------------------------------------------------- Triton (interpreter)


LAUNCHES = {"per-head": 1 << 30, "tiled": 0}  # triton_fused.TILED_MIN_TOKENS forcing each launch


@pytest.fixture(params=list(LAUNCHES))
def launch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with each of ``qk_norm_rope_store``'s launches whatever the token count."""
    monkeypatch.setattr(triton_fused, "TILED_MIN_TOKENS", LAUNCHES[request.param])
    return request.param


@needs_interpreter
@pytest.mark.parametrize("num_tokens", [1, 6])
@pytest.mark.parametrize("name", list(CPU_CASES))
def test_triton_matches_reference_interpreted(name: str, num_tokens: int, launch: str) -> None:
    a = make_inputs(CPU_CASES[name], num_tokens, torch.float32, "cpu", seed=num_tokens)
    check_against_reference(triton_fused.qk_norm_rope_store, a, 1e-5)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(CPU_CASES))
def test_tiled_launch_equals_per_head_interpreted(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype
) -> None:
    """The tiled launch gives the reference's values and the per-head launch's bits (the interpreter sums the
    squares in the same order; a GPU may not), in one partial tile and in tiles of 2-8 heads whose rows straddle
    tokens (5 tokens, 1-4 heads, a partial last tile), padding slots included."""
    a = make_inputs(CPU_CASES[name], 5, dtype, "cpu", seed=5)
    head_args = clone_caches(a)
    monkeypatch.setattr(triton_fused, "TILED_MIN_TOKENS", LAUNCHES["per-head"])
    head_q = triton_fused.qk_norm_rope_store(**head_args)
    monkeypatch.setattr(triton_fused, "TILED_MIN_TOKENS", LAUNCHES["tiled"])
    tiled = {}

    def tiled_launch(**kwargs) -> torch.Tensor:  # keeps its arguments (the caches it wrote) and q
        tiled.update(kwargs, q=triton_fused.qk_norm_rope_store(**kwargs))
        return tiled["q"]

    for tile_elems in (4096, 128):
        monkeypatch.setattr(triton_fused, "_TILE_ELEMS", tile_elems)
        check_against_reference(tiled_launch, a, 1e-5 if dtype == torch.float32 else 1e-2)
        assert torch.equal(tiled["q"], head_q)
        for name_c in ("k_cache", "v_cache"):
            tiled_c, head_c = tiled[name_c], head_args[name_c]
            assert torch.equal(tiled_c.isnan(), head_c.isnan())
            assert torch.equal(tiled_c.nan_to_num(), head_c.nan_to_num())


@needs_interpreter
@pytest.mark.parametrize("num_tokens,tiled", [(4, False), (5, True)])
def test_launch_follows_token_threshold(
    monkeypatch: pytest.MonkeyPatch, num_tokens: int, tiled: bool
) -> None:
    """One launch per call: per (token, head) below ``TILED_MIN_TOKENS`` tokens, tiled from there on."""
    launched = []

    class Spy:
        def __init__(self, kernel) -> None:
            self.kernel = kernel

        def __getitem__(self, grid):
            launched.append((self.kernel, grid))
            return self.kernel[grid]

    monkeypatch.setattr(triton_fused, "TILED_MIN_TOKENS", 5)
    for kernel in ("_qk_norm_rope_store_kernel", "_qk_norm_rope_store_tiled_kernel"):
        monkeypatch.setattr(triton_fused, kernel, Spy(getattr(triton_fused, kernel)))
    a = make_inputs(CPU_CASES["qwen3-like"], num_tokens, torch.float32, "cpu")
    check_against_reference(triton_fused.qk_norm_rope_store, a, 1e-5)
    ((kernel, grid),) = launched
    if tiled:  # 32-dim heads: 128 rows per program; 4 query + 2 key heads per token
        assert kernel is triton_fused._qk_norm_rope_store_tiled_kernel.kernel
        assert grid == (triton.cdiv(4 * num_tokens, 128) + triton.cdiv(2 * num_tokens, 128),)
    else:
        assert kernel is triton_fused._qk_norm_rope_store_kernel.kernel and grid == (num_tokens, 6)


@needs_interpreter
def test_triton_empty_batch_and_bad_rot_dim() -> None:
    a = make_inputs(CPU_CASES["qwen3-like"], 0, torch.float32, "cpu")
    assert triton_fused.qk_norm_rope_store(**a).shape == (0, 4 * 32)
    b = make_inputs(CPU_CASES["qwen3-like"], 2, torch.float32, "cpu")
    with pytest.raises(ValueError, match="cos_sin_cache width"):
        triton_fused.qk_norm_rope_store(**{**b, "cos_sin_cache": torch.zeros(64, 66)})


# ------------------------------------------------------------------------------------------------------ GPU

GPU_CASES = {
    "qwen3-0.6b": Case(
        16, 8, 128, 128, block_size=16, max_pos=40960, rope=(("rope_type", "default"), ("rope_theta", 1e6))
    ),
    "llama3-8b": Case(
        32,
        8,
        128,
        128,
        q_norm=False,
        k_norm=False,
        block_size=16,
        max_pos=8192,
        rope=tuple(LLAMA3_ROPE.items()),
    ),
    "qwen3-tp2": Case(8, 4, 128, 128, block_size=64, max_pos=4096),
    "head256-partial-gptj": Case(8, 1, 256, 64, is_neox=False, block_size=32, max_pos=4096),
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("num_tokens", [1, 7, 256])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_triton_matches_reference_bf16(name: str, num_tokens: int, launch: str) -> None:
    a = make_inputs(GPU_CASES[name], num_tokens, torch.bfloat16, "cuda", seed=num_tokens)
    check_against_reference(triton_fused.qk_norm_rope_store, a, 1e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_tiled_launch_matches_per_head_launch(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The same math: at most a rare one-ulp difference where the two reductions sum the squares in another
    order."""
    a = make_inputs(GPU_CASES[name], 1000, torch.bfloat16, "cuda", seed=7)
    outs = []
    for launch in ("per-head", "tiled"):
        monkeypatch.setattr(triton_fused, "TILED_MIN_TOKENS", LAUNCHES[launch])
        args = clone_caches(a)
        outs.append((triton_fused.qk_norm_rope_store(**args), args["k_cache"], args["v_cache"]))
    for head_t, tiled_t in zip(*outs, strict=True):
        assert torch.equal(head_t.isnan(), tiled_t.isnan())
        assert (head_t.nan_to_num() != tiled_t.nan_to_num()).float().mean().item() <= 1e-3
        assert rel_err(tiled_t.nan_to_num(), head_t.nan_to_num()) <= 1e-3


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("num_tokens", [1, 256])
@pytest.mark.parametrize("name", ["qwen3-0.6b", "llama3-8b"])
def test_triton_matches_separate_triton_kernels(name: str, num_tokens: int, dtype: torch.dtype) -> None:
    """Same rounding order as the separate Triton kernels: at most an ulp apart (RMS summation order)."""
    a = make_inputs(GPU_CASES[name], num_tokens, dtype, "cuda", seed=3)
    sep_args, out_args = clone_caches(a), clone_caches(a)
    sep_args["qkv"] = a["qkv"].clone()  # the separate rotary kernel rotates in place
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    q, k, v = sep_args["qkv"].split([hq * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.unflatten(-1, (hq, d)), k.unflatten(-1, (hkv, d)), v.unflatten(-1, (hkv, d))
    if a["q_norm_weight"] is not None:
        q = triton_ops.rms_norm(q, a["q_norm_weight"], a["eps"])
        k = triton_ops.rms_norm(k, a["k_norm_weight"], a["eps"])
    q, k = triton_ops.rotary_embedding(a["positions"], q, k, a["cos_sin_cache"], a["is_neox"])
    triton_attention.store_kv_cache(k, v, sep_args["k_cache"], sep_args["v_cache"], a["slot_mapping"])
    out_q = triton_fused.qk_norm_rope_store(**out_args)
    tol = 4e-3 if dtype == torch.bfloat16 else 1e-6
    assert rel_err(out_q, q.flatten(-2)) <= tol
    for name_c in ("k_cache", "v_cache"):
        written = ~torch.isnan(sep_args[name_c])
        assert torch.equal(written, ~torch.isnan(out_args[name_c]))
        assert rel_err(out_args[name_c][written], sep_args[name_c][written]) <= tol


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 5])
def test_replays_in_a_cuda_graph(batch: int) -> None:
    """Captured once with padded rows (slot -1), replayed on new qkv/positions/slots written in place."""
    case, num_pad, dtype = GPU_CASES["qwen3-0.6b"], 3, torch.bfloat16
    a = make_inputs(case, batch + num_pad, dtype, "cuda")
    a["k_cache"].normal_()
    a["v_cache"].normal_()
    a["slot_mapping"].fill_(-1)
    triton_fused.qk_norm_rope_store(**a)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_fused.qk_norm_rope_store(**a)
    num_slots = a["k_cache"].shape[0] * case.block_size
    for seed in range(2):
        fresh = make_inputs(case, batch + num_pad, dtype, "cuda", seed=seed + 1)
        a["qkv"].copy_(fresh["qkv"])
        a["positions"].copy_(fresh["positions"])
        a["slot_mapping"][:batch].copy_(torch.randperm(num_slots, device="cuda")[:batch])
        ref_args = clone_caches(a)
        ref_q = reference.qk_norm_rope_store(**ref_args)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref_q) <= 1e-2
        for name in ("k_cache", "v_cache"):
            assert rel_err(a[name], ref_args[name]) <= 1e-2
