"""The pure-torch kernels against naive dense implementations and HF's own functions."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from inferd.kernels import reference as ref


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [qlen, Hq, D] (the last qlen of the seq_len positions); k, v [seq_len, Hkv, D] -> [qlen, Hq, D]."""
    qlen, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1).double()
    v = v.repeat_interleave(group, dim=1).double()
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale  # [Hq, qlen, seq_len]
    q_pos = torch.arange(seq_len - qlen, seq_len)[:, None]
    scores = scores.masked_fill(torch.arange(seq_len)[None, :] > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _build_batch(
    seqs: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    pad: int,
    seed: int,
):
    """seqs: (seq_len, query_len) pairs. Returns kernel inputs plus per-seq dense k/v for the oracle."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    blocks_needed = [(s + block_size - 1) // block_size for s, _ in seqs]
    num_blocks = sum(blocks_needed) + 3
    free = list(range(num_blocks))
    rng.shuffle(free)
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    max_blocks = max(blocks_needed)
    block_tables = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
    dense_kv, queries = [], []
    for b, ((seq_len, _), nb) in enumerate(zip(seqs, blocks_needed, strict=True)):
        table = [free.pop() for _ in range(nb)]
        block_tables[b, :nb] = torch.tensor(table, dtype=torch.int32)
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
        slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(seq_len)])
        ref.store_kv_cache(k, v, k_cache, v_cache, slots)
        dense_kv.append((k, v))
    for _, qlen in seqs:
        queries.append(torch.randn(qlen, num_heads, head_dim, generator=gen))
    query = torch.cat([*queries, torch.randn(pad, num_heads, head_dim, generator=gen)])
    qlens = [q for _, q in seqs]
    query_start_loc = torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32)
    seq_lens = torch.tensor([s for s, _ in seqs], dtype=torch.int32)
    inputs = (
        query,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        query_start_loc,
        max(qlens),
        int(seq_lens.max()),
    )
    return inputs, dense_kv, queries


@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 16), (4, 4, 8), (6, 1, 32)])
def test_paged_attention_matches_dense_causal_attention(block_size, num_heads, num_kv_heads, head_dim):
    rng = random.Random(block_size * 100 + num_heads + head_dim)
    seqs = [(1, 1), (7, 7), (9, 1), (33, 1), (20, 5), (17, 17), (40, 13)]  # decode, prefill, chunked
    seqs += [(s, rng.randint(1, s)) for s in (rng.randint(1, 50) for _ in range(5))]
    rng.shuffle(seqs)
    scale = head_dim**-0.5
    inputs, dense_kv, queries = _build_batch(
        seqs, num_heads, num_kv_heads, head_dim, block_size, pad=3, seed=1
    )
    out = ref.paged_attention(*inputs, scale=scale)
    assert out.shape == inputs[0].shape
    start = 0
    for q, (k, v) in zip(queries, dense_kv, strict=True):
        expected = _naive_attention(q, k, v, scale)
        torch.testing.assert_close(out[start : start + len(q)].double(), expected, atol=1e-5, rtol=1e-5)
        start += len(q)
    assert torch.all(out[start:] == 0), "padding rows must be zero"


def test_paged_attention_half_precision_keeps_dtype_and_accuracy():
    seqs = [(12, 12), (30, 1), (25, 6)]
    inputs, _, _ = _build_batch(seqs, 4, 2, 16, 8, pad=0, seed=3)
    out32 = ref.paged_attention(*inputs, scale=0.25)
    half = list(inputs)
    for i in range(3):
        half[i] = inputs[i].to(torch.bfloat16)
    out16 = ref.paged_attention(*half, scale=0.25)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), out32, atol=3e-2, rtol=3e-2)


def test_store_kv_cache_skips_negative_slots():
    k_cache = torch.zeros(4, 4, 2, 8)
    v_cache = torch.zeros(4, 4, 2, 8)
    key = torch.randn(5, 2, 8)
    value = torch.randn(5, 2, 8)
    slot_mapping = torch.tensor([3, -1, 9, 14, -1])
    ref.store_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    flat_k, flat_v = k_cache.view(16, 2, 8), v_cache.view(16, 2, 8)
    for i, slot in enumerate(slot_mapping.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], key[i])
            assert torch.equal(flat_v[slot], value[i])
    untouched = [s for s in range(16) if s not in (3, 9, 14)]
    assert torch.all(flat_k[untouched] == 0) and torch.all(flat_v[untouched] == 0)


def test_rms_norm_matches_hf():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    hf = Qwen3RMSNorm(64, eps=1e-6)
    hf.weight.data = torch.randn(64)
    x = torch.randn(7, 64) * 3
    torch.testing.assert_close(ref.rms_norm(x, hf.weight, 1e-6), hf(x))
    out_bf16 = ref.rms_norm(x.bfloat16(), hf.weight.bfloat16(), 1e-6)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), hf(x), atol=5e-2, rtol=2e-2)


def test_fused_add_rms_norm_returns_normed_sum_and_sum():
    x, residual, weight = torch.randn(5, 32), torch.randn(5, 32), torch.randn(32)
    out, new_residual = ref.fused_add_rms_norm(x, residual, weight, 1e-5)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, ref.rms_norm(x + residual, weight, 1e-5))


def test_silu_and_mul():
    x = torch.randn(6, 2 * 24)
    torch.testing.assert_close(ref.silu_and_mul(x), F.silu(x[:, :24]) * x[:, 24:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_silu_and_mul_linear_is_the_composition(bias: bool, dtype: torch.dtype):
    """The fused MLP contract: silu_and_mul (rounded to x's dtype) then linear, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(5, 2 * 24).to(dtype)
    w = torch.randn(7, 24).to(dtype)
    b = torch.randn(7).to(dtype) if bias else None
    out = ref.silu_and_mul_linear(x, w, b)
    assert out.dtype == dtype and out.shape == (5, 7)
    assert torch.equal(out, ref.linear(ref.silu_and_mul(x), w, b))
    h = (F.silu(x[:, :24].double()) * x[:, 24:].double()).to(dtype).double()  # rounded as the contract says
    expected = F.linear(h, w.double(), b.double() if bias else None)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, atol=tol * 5, rtol=tol)


def test_silu_and_mul_linear_rejects_mismatched_halves():
    with pytest.raises(ValueError, match="2 \\* K"):
        ref.silu_and_mul_linear(torch.zeros(2, 24), torch.zeros(3, 24))


def _cos_sin_cache(max_pos: int, rot_dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv_freq = 1.0 / theta ** (torch.arange(0, rot_dim, 2).float() / rot_dim)
    freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def test_rotary_matches_hf_apply_rotary_pos_emb():
    num_tokens, hq, hkv, d = 9, 4, 2, 16
    positions = torch.tensor([0, 1, 2, 5, 17, 3, 63, 40, 8])
    q, k = torch.randn(num_tokens, hq, d), torch.randn(num_tokens, hkv, d)
    cache = _cos_sin_cache(64, d)
    q_ref, k_ref = q.clone(), k.clone()
    out_q, out_k = ref.rotary_embedding(positions, q, k, cache, is_neox=True)
    cos, sin = cache[positions].chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # HF layout [T, D]
    # HF: q [batch, heads, seq, D], cos [batch, seq, D]
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    torch.testing.assert_close(out_q, hf_q[0].transpose(0, 1))
    torch.testing.assert_close(out_k, hf_k[0].transpose(0, 1))
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref), "inputs must not change"


def test_rotary_partial_and_gptj_style():
    positions = torch.tensor([0, 3, 11])
    q, k = torch.randn(3, 2, 16), torch.randn(3, 1, 16)
    cache = _cos_sin_cache(16, 8)  # rotate only the first 8 of 16 dims
    out_q, out_k = ref.rotary_embedding(positions, q, k, cache, is_neox=False)
    assert torch.equal(out_q[..., 8:], q[..., 8:]) and torch.equal(out_k[..., 8:], k[..., 8:])
    cos, sin = cache[positions].chunk(2, dim=-1)  # [3, 4]
    x1, x2 = q[..., 0:8:2], q[..., 1:8:2]
    c, s = cos[:, None], sin[:, None]
    torch.testing.assert_close(out_q[..., 0:8:2], x1 * c - x2 * s)
    torch.testing.assert_close(out_q[..., 1:8:2], x2 * c + x1 * s)
    assert torch.equal(out_q[0], q[0]), "position 0 is the identity rotation"
