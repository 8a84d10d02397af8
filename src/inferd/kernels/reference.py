"""Pure-torch kernels: the CPU path and the oracle the Triton kernels are tested against.

Every kernel here has the same signature and contract as its Triton twin in ``kernels/triton_*.py``
(the ``*_separately`` functions are not kernels: they compose a fused kernel from any backend's kernels).
These versions favour clarity over speed (``paged_attention`` loops over sequences on the host).
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = [
    "add_rms_norm_linear",
    "decode_advance",
    "fused_add_rms_norm",
    "linear",
    "paged_attention",
    "qk_norm_rope_store",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "silu_and_mul_linear",
    "store_kv_cache",
]


def store_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write each token's key/value into its KV-cache slot; slots < 0 (padding) are skipped.

    key, value: [num_tokens, num_kv_heads, head_dim]
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], contiguous; written in place
    slot_mapping: [num_tokens] int64, ``block_id * block_size + offset``
    """
    num_tokens = slot_mapping.shape[0]
    valid = slot_mapping >= 0  # [num_tokens]
    slots = slot_mapping[valid]  # [num_valid]
    flat_k = k_cache.view(-1, *k_cache.shape[2:])  # [num_blocks * block_size, num_kv_heads, head_dim]
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    flat_k[slots] = key[:num_tokens][valid].to(k_cache.dtype)
    flat_v[slots] = value[:num_tokens][valid].to(v_cache.dtype)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    seq_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of a flat batch of new tokens over their sequences' cached keys/values.

    query: [num_tokens, num_heads, head_dim]; k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: [num_seqs, max_blocks] int32; seq_lens: [num_seqs] int32 (context including the new tokens);
    query_start_loc: [num_seqs + 1] int32.
    Query token ``i`` of sequence ``b`` sits at position ``seq_lens[b] - query_len_b + i`` and attends to cached
    positions up to and including its own. Head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``.
    Returns [num_tokens, num_heads, head_dim] in ``query.dtype``; rows past ``query_start_loc[-1]`` are zero.
    Softmax runs in float32. ``max_query_len`` and ``max_seq_len`` are launch hints, unused here; so is
    ``seq_order`` ([num_seqs] int32, a permutation of the sequences, longest first: the order in which the GPU
    kernel starts decode sequences, so that long ones do not start last).
    """
    del max_query_len, max_seq_len
    num_heads = query.shape[1]
    block_size, num_kv_heads, head_dim = k_cache.shape[1:]
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    out = torch.zeros_like(query)  # [num_tokens, num_heads, head_dim]
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        q_start, q_end = starts[b], starts[b + 1]
        query_len = q_end - q_start
        if query_len == 0:
            continue
        assert seq_len >= query_len, "seq_lens must include the new tokens"
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = block_tables[b, :num_blocks].long()  # [num_blocks]
        k = k_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]  # [seq_len, num_kv_heads, head_dim]
        v = v_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
        q_pos = torch.arange(seq_len - query_len, seq_len, device=query.device)  # [query_len]
        k_pos = torch.arange(seq_len, device=query.device)  # [seq_len]
        mask = k_pos[None, :] <= q_pos[:, None]  # [query_len, seq_len]
        o = F.scaled_dot_product_attention(
            query[q_start:q_end].transpose(0, 1).float(),  # [num_heads, query_len, head_dim]
            k.transpose(0, 1).float(),  # [num_kv_heads, seq_len, head_dim]
            v.transpose(0, 1).float(),
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )  # [num_heads, query_len, head_dim]
        out[q_start:q_end] = o.transpose(0, 1).to(query.dtype)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim, computed in float32.

    x: [num_tokens, hidden]; weight: [hidden]. Returns [num_tokens, hidden] in ``x.dtype``.
    """
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rms_norm(x + residual, weight, eps), x + residual)``; the sum is taken in ``x.dtype``.

    x, residual: [num_tokens, hidden]; weight: [hidden].
    """
    summed = x + residual.to(x.dtype)  # [num_tokens, hidden]
    return rms_norm(summed, weight, eps), summed


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, 2 * intermediate] -> ``silu(x[:, :I]) * x[:, I:]``: [num_tokens, intermediate]."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """x: [T, H, D]; cos, sin: [T, 1, rot_dim // 2] float32. Rotates the first rot_dim dims of each head."""
    rot_dim = cos.shape[-1] * 2
    x_rot = x[..., :rot_dim].float()
    if is_neox:
        x1, x2 = x_rot.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x[..., rot_dim:]), dim=-1)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of the first ``rot_dim`` dims of every query and key head.

    positions: [num_tokens] int64; query: [num_tokens, num_heads, head_dim]; key: [num_tokens, num_kv_heads, head_dim];
    cos_sin_cache: [max_position, rot_dim] float32, cos in the first rot_dim/2 columns and sin in the rest.
    ``is_neox`` rotates the two halves (HF Llama/Qwen); otherwise even/odd pairs (GPT-J).
    Returns new (query, key) of the input shapes and dtypes; the inputs are not modified.
    """
    cos_sin = cos_sin_cache.index_select(0, positions.long())  # [num_tokens, rot_dim]
    cos, sin = cos_sin.float().unsqueeze(1).chunk(2, dim=-1)  # [num_tokens, 1, rot_dim // 2] each
    return _rotate(query, cos, sin, is_neox), _rotate(key, cos, sin, is_neox)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: x [M, K], weight [N, K], bias [N] or None -> [M, N] in ``x.dtype`` (``F.linear``)."""
    return F.linear(x, weight, bias)


def silu_and_mul_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``linear(silu_and_mul(x), weight, bias)``: the gated MLP's activation and down projection in one call.

    x: [M, 2 * I] (gate | up, this rank's slice of each), weight [N, I], bias [N] or None -> [M, N] in ``x.dtype``;
    the activation is rounded to ``x.dtype`` before the matmul, as the two separate kernels do.
    """
    return silu_and_mul_linear_separately(sys.modules[__name__], x, weight, bias)


def silu_and_mul_linear_separately(
    ops: ModuleType, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`silu_and_mul_linear` as ``ops.silu_and_mul`` then ``ops.linear``: this module's (the reference) or an
    installed backend's (the unfused path, ``INFERD_SKINNY_GEMM=0``)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != 2 * weight.shape[1]:
        raise ValueError(
            f"silu_and_mul_linear needs x [M, 2 * K] and weight [N, K]; got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    return ops.linear(ops.silu_and_mul(x), weight, bias)


def add_rms_norm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-norm projection: ``h = x + residual`` (or ``x`` when ``residual`` is None), then
    ``linear(rms_norm(h, norm_weight, eps), weight, bias)``.

    x, residual: [M, K]; norm_weight: [K]; weight [N, K]; bias [N] or None. Returns ``(out [M, N], h [M, K])``, both
    in ``x.dtype``: ``h`` is the next residual (a new tensor where a residual was added, else ``x`` itself). The sum
    is rounded to ``x.dtype`` as :func:`fused_add_rms_norm` rounds it; fused versions may skip rounding the normed
    rows before the matmul.
    """
    return add_rms_norm_linear_separately(sys.modules[__name__], x, residual, norm_weight, eps, weight, bias)


def add_rms_norm_linear_separately(
    ops: ModuleType,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`add_rms_norm_linear` as ``ops.fused_add_rms_norm`` (or ``ops.rms_norm``) then ``ops.linear``."""
    if (
        x.dim() != 2
        or weight.dim() != 2
        or x.shape[1] != weight.shape[1]
        or norm_weight.shape != (x.shape[1],)
    ):
        raise ValueError(
            f"add_rms_norm_linear needs x [M, K], norm_weight [K] and weight [N, K]; got {tuple(x.shape)}, "
            f"{tuple(norm_weight.shape)} and {tuple(weight.shape)}"
        )
    if residual is None:
        return ops.linear(ops.rms_norm(x, norm_weight, eps), weight, bias), x
    normed, summed = ops.fused_add_rms_norm(x, residual, norm_weight, eps)
    return ops.linear(normed, weight, bias), summed


def qk_norm_rope_store(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    is_neox: bool = True,
) -> torch.Tensor:
    """The attention prologue in one call: per-head RMSNorm of q and k (each optional), rotary on q and k, and the
    KV-cache write of k and v; returns the query only (paged attention reads keys/values from the cache).

    qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim], rows q | k | v (this rank's heads);
    positions, slot_mapping: [num_tokens] int64 (slots < 0 are padding: not written);
    cos_sin_cache: [max_position, rot_dim] float32 as in :func:`rotary_embedding`;
    q_norm_weight, k_norm_weight: [head_dim] or None (no norm); k_cache, v_cache: [num_blocks, block_size,
    num_kv_heads, head_dim], written in place.
    Returns q [num_tokens, num_heads * head_dim] in ``qkv.dtype``; ``qkv`` is not modified. Same values as
    ``rms_norm`` (float32, rounded to ``qkv.dtype``) → ``rotary_embedding`` → ``store_kv_cache``.
    """
    return qk_norm_rope_store_separately(
        sys.modules[__name__], qkv, positions, cos_sin_cache, q_norm_weight, k_norm_weight, eps, k_cache,
        v_cache, slot_mapping, num_heads, num_kv_heads, head_dim, is_neox,
    )  # fmt: skip


def qk_norm_rope_store_separately(
    ops: ModuleType,
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    eps: float,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    is_neox: bool = True,
) -> torch.Tensor:
    """:func:`qk_norm_rope_store` as separate calls of ``ops.rms_norm`` (×2), ``ops.rotary_embedding`` and
    ``ops.store_kv_cache``: this module's (the reference) or an installed backend's (to compare the fused kernel
    with the separate ones; a Triton rotary may rotate ``qkv``'s q/k slices in place)."""
    _check_qkv_shapes(qkv, positions, slot_mapping, num_heads, num_kv_heads, head_dim)
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q = q.unflatten(-1, (num_heads, head_dim))  # [num_tokens, num_heads, head_dim]
    k = k.unflatten(-1, (num_kv_heads, head_dim))  # [num_tokens, num_kv_heads, head_dim]
    v = v.unflatten(-1, (num_kv_heads, head_dim))
    if q_norm_weight is not None:
        q = ops.rms_norm(q, q_norm_weight, eps)
    if k_norm_weight is not None:
        k = ops.rms_norm(k, k_norm_weight, eps)
    q, k = ops.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    ops.store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return q.flatten(-2)


def _check_qkv_shapes(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    width = (num_heads + 2 * num_kv_heads) * head_dim
    if qkv.dim() != 2 or qkv.shape[1] != width:
        raise ValueError(
            f"qkv must be [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] = [T, {width}]; "
            f"got {tuple(qkv.shape)}"
        )
    num_tokens = qkv.shape[0]
    if positions.shape != (num_tokens,) or slot_mapping.shape != (num_tokens,):
        raise ValueError(
            f"positions {tuple(positions.shape)} and slot_mapping {tuple(slot_mapping.shape)} must both be "
            f"[{num_tokens}] (one per qkv row)"
        )


def decode_advance(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    seq_lens: torch.Tensor,
    slot_mapping: torch.Tensor,
    next_ids: torch.Tensor,
    next_slots: torch.Tensor,
) -> None:
    """One decode step further, in place, for the first ``n = next_ids.shape[0]`` sequences:
    ``input_ids[:n] = next_ids``, ``slot_mapping[:n] = next_slots``, ``positions[:n] += 1``, ``seq_lens[:n] += 1``.

    input_ids, positions, slot_mapping: [>= n] int64; seq_lens: [>= n] int32 (all contiguous, written in place;
    entries from ``n`` on are untouched); next_ids, next_slots: [n] int64 (the sampled tokens and their KV slots).
    All on one device. Raises ``ValueError`` on other shapes, dtypes or devices.
    """
    n = _check_decode_advance(input_ids, positions, seq_lens, slot_mapping, next_ids, next_slots)
    input_ids[:n].copy_(next_ids)
    slot_mapping[:n].copy_(next_slots)
    positions[:n].add_(1)
    seq_lens[:n].add_(1)


def _check_decode_advance(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    seq_lens: torch.Tensor,
    slot_mapping: torch.Tensor,
    next_ids: torch.Tensor,
    next_slots: torch.Tensor,
) -> int:
    """Validates :func:`decode_advance`'s arguments; returns n."""
    if next_ids.dim() != 1 or next_slots.shape != next_ids.shape:
        raise ValueError(
            f"next_ids and next_slots must both be [n]; got {tuple(next_ids.shape)} and {tuple(next_slots.shape)}"
        )
    n = next_ids.shape[0]
    tensors = {
        "input_ids": (input_ids, torch.int64),
        "positions": (positions, torch.int64),
        "seq_lens": (seq_lens, torch.int32),
        "slot_mapping": (slot_mapping, torch.int64),
        "next_ids": (next_ids, torch.int64),
        "next_slots": (next_slots, torch.int64),
    }
    for name, (t, dtype) in tensors.items():
        if t.dtype != dtype:
            raise ValueError(f"decode_advance: {name} must be {dtype}; got {t.dtype}")
        if t.device != input_ids.device:
            raise ValueError(
                f"decode_advance: {name} is on {t.device}, input_ids on {input_ids.device}; use one device"
            )
        if name.startswith("next_"):
            continue
        if t.dim() != 1 or t.shape[0] < n or t.stride(0) != 1:
            raise ValueError(
                f"decode_advance: {name} must be a contiguous 1-D buffer of at least n = {n} entries; got shape "
                f"{tuple(t.shape)}, strides {t.stride()}"
            )
    return n


def temperature_race_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    q: torch.Tensor | None = None,
    q_rows: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    advance_seed: bool = False,
) -> torch.Tensor:
    """Exponential-race sampling: logits [B, V] float (any float dtype, read as float32), temperature [B] (> 0)
    → token ids [B] int64 = ``argmax_v(logits / T − log(max(q, tiny)))`` = ``argmax(softmax(logits / T) / q)``
    with q [B, V] ~ Exp(1); the first index among equal maxima. No input is modified.

    Where q comes from: ``q`` [G, V] float32 Exp(1) draws for the rows that bring their own (seeded requests);
    ``q_rows`` [B] int32 maps row b to ``q[q_rows[b]]``, or −1 to draw its own. Without ``q_rows``, ``q`` must be
    [B, V] (row b uses ``q[b]``); without ``q``, every row draws its own. Rows that draw use the backend's
    generator: here torch's default one for the device (``seed`` and ``advance_seed`` are unused), in the Triton
    kernel Philox keyed by ``seed`` ([1] int64 on the device; a fresh random one when None), which ``advance_seed``
    steps in place after the draws (so a caller keeping one seed tensor draws anew at every call). Only the
    distribution is common to both.
    """
    tiny = torch.finfo(torch.float32).tiny
    if q is not None and q.shape[0] == 0:
        q = None
    if q is None or q_rows is not None:
        drawn = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_()  # [B, V]
        if q is not None:
            assert q_rows is not None
            own = q.index_select(0, q_rows.clamp_min(0).long())  # [B, V]
            drawn = torch.where((q_rows >= 0).unsqueeze(1), own.float(), drawn)
        q = drawn
    elif q.shape[0] != logits.shape[0]:
        raise ValueError(
            f"q has {q.shape[0]} rows for {logits.shape[0]} logits rows; pass q_rows to map them."
        )
    scores = logits.float() * (1.0 / temperature.float()).unsqueeze(1) - q.float().clamp_min(tiny).log()
    return scores.argmax(dim=-1)
