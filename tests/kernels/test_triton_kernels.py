"""The Triton kernels compute the same function as ``inferd.kernels.reference`` on random inputs.

On CPU they run through ``TRITON_INTERPRET=1`` in float32 (relative error <= 1e-3); on a GPU in bf16 (<= 1e-2)
and float32. Every float buffer the kernels allocate starts as NaN, so an unwritten output element fails the test.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault(
        "TRITON_INTERPRET", "1"
    )  # before the kernel modules define their @triton.jit functions

from inferd.kernels import reference, triton_attention, triton_ops

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()

CONFIGS = [
    pytest.param(
        ("cpu", torch.float32, 1e-3),
        id="cpu-f32",
        marks=pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1"),
    ),
    pytest.param(
        ("cuda", torch.bfloat16, 1e-2),
        id="cuda-bf16",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")],
    ),
    pytest.param(
        ("cuda", torch.float32, 1e-3),
        id="cuda-f32",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")],
    ),
]


@pytest.fixture(params=CONFIGS)
def cfg(request: pytest.FixtureRequest) -> tuple[str, torch.dtype, float]:
    return request.param


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every floating-point tensor from torch.empty/empty_like with NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the output"
    assert out.shape == ref.shape and out.dtype == ref.dtype
    diff = (out.double() - ref.double()).norm()
    return (diff / ref.double().norm().clamp_min(1e-30)).item()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------------------------- attention


def make_attention_batch(
    query_lens: list[int],
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    num_pad_tokens: int,
    dtype: torch.dtype,
    device: str,
) -> dict:
    """A random paged KV cache whose unused slots (and the query's padding rows) are NaN."""
    blocks_per_seq = [cdiv(s, block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks).tolist()
    block_tables = torch.randint(0, num_blocks, (len(seq_lens), max(blocks_per_seq) + 2), dtype=torch.int32)
    k_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = k_cache.clone()
    for b, (n, s) in enumerate(zip(blocks_per_seq, seq_lens, strict=True)):
        ids = [perm.pop() for _ in range(n)]
        block_tables[b, :n] = torch.tensor(ids, dtype=torch.int32)
        flat = torch.tensor(ids).repeat_interleave(block_size) * block_size + torch.arange(block_size).repeat(
            n
        )
        k_cache.view(-1, num_kv_heads, head_dim)[flat[:s]] = torch.randn(s, num_kv_heads, head_dim).to(dtype)
        v_cache.view(-1, num_kv_heads, head_dim)[flat[:s]] = torch.randn(s, num_kv_heads, head_dim).to(dtype)
    num_tokens = sum(query_lens)
    query = torch.randn(num_tokens + num_pad_tokens, num_heads, head_dim).to(dtype)
    query[num_tokens:] = float("nan")
    qsl = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    tensors = {
        "query": query,
        "k_cache": k_cache,
        "v_cache": v_cache,
        "block_tables": block_tables,
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32),
        "query_start_loc": qsl,
    }
    return {name: t.to(device) for name, t in tensors.items()}


def check_attention(
    cfg: tuple[str, torch.dtype, float],
    query_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    block_size: int = 16,
    num_pad_tokens: int = 0,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    longest_first: bool = False,
) -> None:
    device, dtype, tol = cfg
    batch = make_attention_batch(
        query_lens, seq_lens, num_heads, num_kv_heads, head_dim, block_size, num_pad_tokens, dtype, device
    )
    if longest_first:  # the decode launch order the CUDA-graph runner passes
        order = sorted(range(len(seq_lens)), key=lambda b: -seq_lens[b])
        batch["seq_order"] = torch.tensor(order, dtype=torch.int32, device=device)
    # Larger max_query_len / max_seq_len than the batch's are upper bounds, as CUDA-graph replays pass.
    hints = {
        "max_query_len": max_query_len or max(query_lens),
        "max_seq_len": max_seq_len or max(seq_lens),
        "scale": head_dim**-0.5,
    }
    out = triton_attention.paged_attention(**batch, **hints)
    ref = reference.paged_attention(**batch, **hints)
    num_tokens = sum(query_lens)
    assert out.shape == batch["query"].shape
    assert rel_err(out[:num_tokens], ref[:num_tokens]) <= tol
    assert torch.equal(out[num_tokens:], torch.zeros_like(out[num_tokens:])), "padding rows must be zero"


ATTENTION_CASES = {
    "decode": ([1, 1, 1, 1], [1, 17, 40, 75]),
    "prefill": ([5, 33, 16], [5, 33, 16]),
    "chunked_prefill": ([7, 20], [50, 36]),
    "mixed": ([1, 9, 0, 1, 24], [30, 9, 10, 64, 40]),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("queries_per_kv", [1, 2, 4])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_attention_matches_reference(cfg, case: str, queries_per_kv: int, block_size: int) -> None:
    query_lens, seq_lens = ATTENTION_CASES[case]
    check_attention(cfg, query_lens, seq_lens, num_heads=2 * queries_per_kv, block_size=block_size)


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_paged_attention_padding_rows_and_bounds(cfg, case: str) -> None:
    query_lens, seq_lens = ATTENTION_CASES[case]
    check_attention(
        cfg,
        query_lens,
        seq_lens,
        num_pad_tokens=3,
        max_query_len=max(query_lens) + 5,
        max_seq_len=4 * max(seq_lens),
    )


@pytest.mark.parametrize("split", [False, True])
def test_paged_attention_decode_in_longest_first_order(
    cfg, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``seq_order`` only changes which program serves which sequence: same output, padded or split."""
    if split:
        monkeypatch.setattr(triton_attention, "MIN_SPLIT_TOKENS", 16)
        monkeypatch.setattr(triton_attention, "UNSPLIT_MAX_SEQ_LEN", 16)
    check_attention(cfg, [1] * 5, [3, 75, 17, 40, 1], num_pad_tokens=2, max_seq_len=256, longest_first=True)


def test_paged_attention_rejects_a_bad_seq_order() -> None:
    batch = make_attention_batch([1, 1], [3, 9], 4, 2, 32, 16, 0, torch.float32, "cpu")
    hints = {"max_query_len": 1, "max_seq_len": 9, "scale": 1.0}
    with pytest.raises(ValueError, match="seq_order"):
        triton_attention.paged_attention(**batch, **hints, seq_order=torch.tensor([1, 0]))  # int64


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # the merge reads padding rows' unwritten (NaN) partials
@pytest.mark.parametrize("block_size", [16, 64])
def test_paged_attention_split_kv_decode(cfg, block_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_attention, "MIN_SPLIT_TOKENS", 32)
    monkeypatch.setattr(triton_attention, "UNSPLIT_MAX_SEQ_LEN", 16)
    seq_lens = [3, 150, 97]
    for max_seq_len in (150, 1000):  # exact, and a graph-style bound (more splits, most of them empty)
        assert triton_attention._num_splits(3, 2, 1, max_seq_len, torch.device(cfg[0])) > 1
        check_attention(
            cfg,
            [1, 1, 1],
            seq_lens,
            num_heads=8,
            block_size=block_size,
            num_pad_tokens=2,
            max_seq_len=max_seq_len,
        )


def test_short_decode_contexts_run_unsplit() -> None:
    """Up to UNSPLIT_MAX_SEQ_LEN no decode batch splits (no merge kernel); the CUDA-graph runner's short-context
    graphs are captured with a bound that keeps them unsplit, for the buckets whose long-context graphs split."""
    from inferd.worker import cuda_graph

    cpu = torch.device("cpu")
    short = triton_attention.UNSPLIT_MAX_SEQ_LEN
    assert cuda_graph.SHORT_CONTEXT <= short
    for batch in (1, 4, 16, 32):
        assert triton_attention._num_splits(batch, 8, 1, short, cpu) == 1
        assert triton_attention._num_splits(batch, 8, 1, 4096, cpu) > 1  # Qwen3-0.6B: 8 KV heads
    assert triton_attention._num_splits(cuda_graph.SHORT_CONTEXT_MAX_BATCH * 2, 8, 1, 4096, cpu) == 1
    assert triton_attention._num_splits(1, 8, 1, short + 1, cpu) > 1


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_paged_attention_qwen3_shapes(block_size: int, case: str) -> None:
    g = torch.Generator().manual_seed(block_size)
    if case == "decode":
        seq_lens = torch.randint(1, 2048, (33,), generator=g).tolist()
        query_lens = [1] * 33
    else:
        seq_lens = [2048, 700, 1, 1500, 300]
        query_lens = [512, 1, 1, 1, 300]
    cfg = ("cuda", torch.bfloat16, 1e-2)
    qwen3 = {"num_heads": 16, "num_kv_heads": 8, "head_dim": 128, "block_size": block_size}
    check_attention(cfg, query_lens, seq_lens, **qwen3)
    # batch-1 decode / one prefill chunk, padded for a CUDA graph, with bounds instead of exact maxima
    check_attention(cfg, query_lens[:1], seq_lens[:1], **qwen3, num_pad_tokens=7, max_seq_len=4096)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 5])
def test_decode_step_replays_in_a_cuda_graph(batch: int) -> None:
    """store_kv_cache + paged_attention captured once, replayed on new lengths/blocks/tokens written in place."""
    num_heads, num_kv_heads, head_dim, block_size, max_blocks, num_pad = 16, 8, 128, 16, 32, 3
    dev, dtype = "cuda", torch.bfloat16
    num_blocks = batch * max_blocks
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device=dev).to(dtype)
    v_cache = torch.randn_like(k_cache)
    static = {
        "query": torch.zeros(batch + num_pad, num_heads, head_dim, device=dev, dtype=dtype),
        "key": torch.zeros(batch + num_pad, num_kv_heads, head_dim, device=dev, dtype=dtype),
        "value": torch.zeros(batch + num_pad, num_kv_heads, head_dim, device=dev, dtype=dtype),
        "slot_mapping": torch.full((batch + num_pad,), -1, device=dev, dtype=torch.int64),
        "block_tables": torch.zeros(batch, max_blocks, device=dev, dtype=torch.int32),
        "seq_lens": torch.ones(batch, device=dev, dtype=torch.int32),
        "query_start_loc": torch.arange(batch + 1, device=dev, dtype=torch.int32),
    }
    hints = {"max_query_len": 1, "max_seq_len": max_blocks * block_size, "scale": head_dim**-0.5}
    attn_args = ("query", "block_tables", "seq_lens", "query_start_loc")

    def step() -> torch.Tensor:
        s = static
        triton_attention.store_kv_cache(s["key"], s["value"], k_cache, v_cache, s["slot_mapping"])
        return triton_attention.paged_attention(
            s["query"], k_cache, v_cache, *(s[n] for n in attn_args[1:]), **hints
        )

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for _ in range(2):
        seq_lens = torch.randint(1, max_blocks * block_size + 1, (batch,))
        tables = torch.randperm(num_blocks)[: batch * max_blocks].view(batch, max_blocks).to(torch.int32)
        pos = seq_lens - 1  # the new token's position
        slots = tables[torch.arange(batch), pos // block_size].long() * block_size + pos % block_size
        static["seq_lens"].copy_(seq_lens)
        static["block_tables"].copy_(tables)
        static["slot_mapping"][:batch].copy_(slots)
        for name in ("query", "key", "value"):
            static[name].copy_(torch.randn(static[name].shape, dtype=dtype))
        k_ref, v_ref = k_cache.clone(), v_cache.clone()
        reference.store_kv_cache(static["key"], static["value"], k_ref, v_ref, static["slot_mapping"])
        ref = reference.paged_attention(
            static["query"], k_ref, v_ref, *(static[n] for n in attn_args[1:]), **hints
        )
        graph.replay()
        assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
        assert rel_err(out[:batch], ref[:batch]) <= 1e-2
        assert torch.equal(out[batch:], torch.zeros_like(out[batch:]))


# ----------------------------------------------------------------------------------------------- KV-cache write


@pytest.mark.parametrize("block_size", [16, 32])
def test_store_kv_cache_writes_slots_and_skips_padding(cfg, block_size: int) -> None:
    device, dtype, _ = cfg
    num_tokens, num_kv_heads, head_dim, num_blocks = 11, 2, 24, 4
    qkv = torch.randn(num_tokens, 3, num_kv_heads, head_dim).to(dtype=dtype, device=device)
    key, value = qkv[:, 1], qkv[:, 2]  # strided views, as cut from a fused projection
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[[2, 7]] = -1
    slot_mapping = slots.to(device=device, dtype=torch.int64)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim).to(dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reference.store_kv_cache(key, value, k_ref, v_ref, slot_mapping)
    triton_attention.store_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    assert torch.equal(k_cache, k_ref)
    assert torch.equal(v_cache, v_ref)


# ----------------------------------------------------------------------------------------------- elementwise


@pytest.mark.parametrize("shape", [(5, 96), (3, 256), (7, 4, 32)])
def test_rms_norm_matches_reference(cfg, shape: tuple[int, ...]) -> None:
    device, dtype, tol = cfg
    hidden = shape[-1]
    x = torch.randn(*shape[:-1], hidden + 16).to(dtype=dtype, device=device)[
        ..., 8 : 8 + hidden
    ]  # strided view
    weight = torch.randn(hidden).to(dtype=dtype, device=device)
    out = triton_ops.rms_norm(x, weight, 1e-6)
    ref = reference.rms_norm(x, weight, 1e-6)
    assert rel_err(out, ref) <= tol


@pytest.mark.parametrize("num_tokens,hidden", [(1, 64), (6, 200)])
def test_fused_add_rms_norm_matches_reference(cfg, num_tokens: int, hidden: int) -> None:
    device, dtype, tol = cfg
    x = torch.randn(num_tokens, hidden).to(dtype=dtype, device=device)
    residual = torch.randn(num_tokens, hidden).to(dtype=dtype, device=device)
    weight = torch.randn(hidden).to(dtype=dtype, device=device)
    x_before, residual_before = x.clone(), residual.clone()
    out, summed = triton_ops.fused_add_rms_norm(x, residual, weight, 1e-5)
    ref_out, ref_summed = reference.fused_add_rms_norm(x, residual, weight, 1e-5)
    assert rel_err(summed, ref_summed) <= tol
    assert rel_err(out, ref_out) <= tol
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


@pytest.mark.parametrize("num_tokens,inter", [(1, 48), (9, 300)])
def test_silu_and_mul_matches_reference(cfg, num_tokens: int, inter: int) -> None:
    device, dtype, tol = cfg
    x = (2 * torch.randn(num_tokens, 2 * inter)).to(dtype=dtype, device=device)
    assert rel_err(triton_ops.silu_and_mul(x), reference.silu_and_mul(x)) <= tol


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("rot_dim", [64, 32])
def test_rotary_embedding_matches_reference(cfg, is_neox: bool, rot_dim: int) -> None:
    device, dtype, tol = cfg
    num_tokens, num_heads, num_kv_heads, head_dim, max_pos = 7, 4, 2, 64, 100
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim)
    angles = torch.arange(max_pos).float()[:, None] * inv_freq[None, :]  # [max_pos, rot_dim // 2]
    cos_sin_cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(device)
    positions = torch.randint(0, max_pos, (num_tokens,)).to(device)
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(dtype=dtype, device=device)
    query, key = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]  # strided views
    ref_q, ref_k = reference.rotary_embedding(positions, query.clone(), key.clone(), cos_sin_cache, is_neox)
    out_q, out_k = triton_ops.rotary_embedding(positions, query, key, cos_sin_cache, is_neox)
    assert rel_err(out_q, ref_q) <= tol
    assert rel_err(out_k, ref_k) <= tol
