"""Spawn target and shared computations for tests/unit/test_tp_layers.py.

:func:`compute_all` builds every sharded layer (and two tiny models) under the current TP group, loads FULL
weights into them and returns their outputs; the test runs it once unsharded in the parent and once per rank
in spawned gloo processes (:func:`run_rank`), then compares.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from inferd.distributed.parallel_state import (
    init_tensor_parallel,
    tp_all_gather,
    tp_broadcast,
    tp_min_int,
    tp_rank,
    tp_size,
)
from inferd.layers.attention import bind_kv_caches, iter_attention_layers
from inferd.layers.attention_metadata import AttentionMetadata
from inferd.layers.linear import ColumnLinear, MergedGateUpLinear, QKVLinear, RowLinear
from inferd.layers.vocab_embedding import LMHead, VocabEmbedding

HIDDEN = 16
HEAD_DIM = 4
NUM_TOKENS = 5
VOCAB = 301
QKV_CASES = {"qkv_2kv": (4, 2), "qkv_1kv": (4, 1)}  # name -> (num_heads, num_kv_heads)
PROMPTS = [[3, 17, 300, 150, 151], [299, 0, 1, 2, 150, 151, 7, 8, 9]]
DECODE_TOKENS = [42, 300]


def full_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The unsharded (checkpoint-shaped) weights and inputs of the layer checks."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    w: dict[str, torch.Tensor] = {
        "x": rand(NUM_TOKENS, HIDDEN),
        "column.w": rand(12, HIDDEN),
        "column.b": rand(12),
        "row.x": rand(NUM_TOKENS, 24),
        "row.w": rand(HIDDEN, 24),
        "row.b": rand(HIDDEN),
        "gate": rand(24, HIDDEN),
        "up": rand(24, HIDDEN),
        "embed": rand(VOCAB, HIDDEN),
        "head": rand(VOCAB, HIDDEN),
        "ids": torch.tensor([0, 1, 150, 151, 299, 300]),
    }
    for name, (nh, nkv) in QKV_CASES.items():
        for part, rows in (("q", nh), ("k", nkv), ("v", nkv)):
            w[f"{name}.{part}.w"] = rand(rows * HEAD_DIM, HIDDEN)
            w[f"{name}.{part}.b"] = rand(rows * HEAD_DIM)
    return w


@torch.no_grad()
def compute_layers(w: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every layer type built under the current TP group. Column-like outputs are this rank's slice."""
    out: dict[str, Any] = {}
    x = w["x"]
    column = ColumnLinear(HIDDEN, 12, bias=True)
    column.weight.weight_loader(column.weight, w["column.w"])
    column.bias.weight_loader(column.bias, w["column.b"])
    out["column"] = tp_all_gather(column(x), dim=-1)  # [num_tokens, 12]
    out["column.shape"] = tuple(column.weight.shape)

    row = RowLinear(24, HIDDEN, bias=True)
    row.weight.weight_loader(row.weight, w["row.w"])
    row.bias.weight_loader(row.bias, w["row.b"])
    local_in = 24 // tp_size()
    out["row"] = row(w["row.x"][:, tp_rank() * local_in : (tp_rank() + 1) * local_in].contiguous())

    for name, (nh, nkv) in QKV_CASES.items():
        qkv = QKVLinear(HIDDEN, HEAD_DIM, nh, nkv, bias=True)
        fused = QKVLinear(HIDDEN, HEAD_DIM, nh, nkv, bias=True)
        for param, suffix in ((qkv.weight, "w"), (qkv.bias, "b")):
            for part in "qkv":
                param.weight_loader(param, w[f"{name}.{part}.{suffix}"], part)
        for param, suffix in ((fused.weight, "w"), (fused.bias, "b")):
            whole = torch.cat([w[f"{name}.{part}.{suffix}"] for part in "qkv"])
            param.weight_loader(param, whole)
        out[name] = qkv(x)  # [num_tokens, q_size + 2 * kv_size] local
        out[f"{name}.fused"] = fused(x)
        out[f"{name}.sizes"] = (qkv.num_heads, qkv.num_kv_heads, qkv.q_size, qkv.kv_size)

    gate_up = MergedGateUpLinear(HIDDEN, 24)
    gate_up.weight.weight_loader(gate_up.weight, w["gate"], 0)
    gate_up.weight.weight_loader(gate_up.weight, w["up"], 1)
    out["gate_up"] = gate_up(x)  # [num_tokens, 2 * 24 / tp]

    embed = VocabEmbedding(VOCAB, HIDDEN)
    embed.weight.weight_loader(embed.weight, w["embed"])
    out["embedding"] = embed(w["ids"])
    out["embedding.shape"] = tuple(embed.weight.shape)
    head = LMHead(VOCAB, HIDDEN)
    head.weight.weight_loader(head.weight, w["head"])
    out["lm_head_untied"] = head(x)
    out["lm_head_tied"] = LMHead(VOCAB, HIDDEN, tie_to=embed)(x)

    out["min_int"] = tp_min_int(10 + tp_rank(), torch.device("cpu"))
    out["broadcast"] = tp_broadcast(torch.full((3,), float(tp_rank() + 1)), src=tp_size() - 1)
    out["gather_dim0"] = tp_all_gather(torch.full((2, 3), float(tp_rank())), dim=0)
    return out


@torch.no_grad()
def model_logits(
    model_cls: type[torch.nn.Module], hf_config: Any, state: dict[str, torch.Tensor], block_size: int = 4
) -> list[torch.Tensor]:
    """Build ``model_cls`` under the current TP group, load the full ``state``, prefill :data:`PROMPTS` through
    a paged KV cache sized for the LOCAL KV heads, then decode one token each. Returns [prefill, decode] logits."""
    model = model_cls(hf_config)
    model.load_weights(state.items())
    model.eval()
    attn = next(iter_attention_layers(model))
    num_blocks = 16
    shape = (num_blocks, block_size, attn.num_kv_heads, attn.head_dim)
    bind_kv_caches(
        model, [(torch.zeros(shape), torch.zeros(shape)) for _ in range(hf_config.num_hidden_layers)]
    )
    tables = [[2 * i + 1, 2 * i + 2, 2 * i + 9] for i in range(len(PROMPTS))]  # scattered blocks
    results = []
    steps = [(list(PROMPTS), [0] * len(PROMPTS)), ([[t] for t in DECODE_TOKENS], [len(p) for p in PROMPTS])]
    for batch, starts in steps:
        ids, positions, slots, query_start = [], [], [], [0]
        for tokens, start, table in zip(batch, starts, tables, strict=True):
            for pos in range(start, start + len(tokens)):
                positions.append(pos)
                slots.append(table[pos // block_size] * block_size + pos % block_size)
            ids += tokens
            query_start.append(query_start[-1] + len(tokens))
        seq_lens = [s + len(t) for s, t in zip(starts, batch, strict=True)]
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            max_query_len=max(len(t) for t in batch),
            max_seq_len=max(seq_lens),
            num_actual_tokens=len(ids),
            query_start_loc_cpu=query_start,
            seq_lens_cpu=seq_lens,
        )
        hidden = model(torch.tensor(ids), torch.tensor(positions), meta)  # [num_tokens, hidden]
        results.append(model.compute_logits(hidden))  # [num_tokens, vocab] float32
    return results


def compute_all(cases: dict[str, Any]) -> dict[str, Any]:
    """The layer checks plus each model case ``name -> (model class, hf_config, full state dict)``."""
    out = compute_layers(full_weights())
    for name, (model_cls, hf_config, state) in cases["models"].items():
        out[name] = model_logits(model_cls, hf_config, state)
    return out


def run_rank(rank: int, world_size: int, init_method: str, cases_path: str, out_dir: str) -> None:
    """Spawn target: join the gloo group, run :func:`compute_all`, save its results as ``rank{rank}.pt``."""
    torch.set_num_threads(1)
    init_tensor_parallel(rank, world_size, init_method, torch.device("cpu"))
    try:
        results = compute_all(torch.load(cases_path, weights_only=False))
        results["tp"] = (tp_rank(), tp_size())
        init_tensor_parallel(rank, world_size, init_method, torch.device("cpu"))  # same group again: no-op
        try:
            init_tensor_parallel(rank, world_size + 1, init_method, torch.device("cpu"))
            results["reinit_error"] = None
        except RuntimeError as e:
            results["reinit_error"] = str(e)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks are done with every collective
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    # Leave without tearing the group down: a gloo teardown racing the peer's exit can abort the process
    # ("terminate called without an active exception"), which is not what these tests check.
    os._exit(0)
