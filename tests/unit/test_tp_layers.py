"""Tensor-parallel layers and models on CPU: 2 gloo ranks in spawned processes agree with the unsharded layers
(built here, in a process without a TP group) to 1e-5, and bad TP sizes get errors naming the flag."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch
from tp_worker import HEAD_DIM, QKV_CASES, VOCAB, compute_all, run_rank
from transformers import LlamaConfig, Qwen3Config
from transformers import LlamaForCausalLM as HFLlama
from transformers import Qwen3ForCausalLM as HFQwen3

from inferd.distributed.parallel_state import (
    kv_head_start,
    local_num_heads,
    local_num_kv_heads,
    tp_all_gather,
    tp_all_reduce,
    tp_size,
)
from inferd.models.llama import LlamaForCausalLM
from inferd.models.qwen3 import Qwen3ForCausalLM

TP = 2
TOL = 1e-5
_TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def _hf_state(hf_cls: type, config: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = hf_cls(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # large enough that a wrong shard shows in the logits
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _cases() -> dict[str, Any]:
    qwen3 = Qwen3Config(**_TINY, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    llama = LlamaConfig(
        **_TINY, num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, mlp_bias=True
    )
    return {
        "models": {
            "qwen3": (Qwen3ForCausalLM, qwen3, _hf_state(HFQwen3, qwen3)),
            "llama": (LlamaForCausalLM, llama, _hf_state(HFLlama, llama)),
        }
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(unsharded results, [results of rank 0, rank 1])."""
    tmp: Path = tmp_path_factory.mktemp("tp")
    cases = _cases()
    torch.save(cases, tmp / "cases.pt")
    assert tp_size() == 1
    reference = compute_all(cases)
    ctx = multiprocessing.get_context("spawn")
    args = (TP, f"file://{tmp}/store", str(tmp / "cases.pt"), str(tmp))
    procs = [ctx.Process(target=run_rank, args=(rank, *args)) for rank in range(TP)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * TP, (
        "a TP worker failed; its traceback is in the captured stderr"
    )
    return reference, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(TP)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (a - b).abs().max().item() <= TOL


def test_ranks_and_small_collectives(results):
    _, ranks = results
    for r, out in enumerate(ranks):
        assert out["tp"] == (r, TP)
        assert "already initialised" in out["reinit_error"]
        assert out["min_int"] == 10
        assert torch.equal(out["broadcast"], torch.full((3,), float(TP)))
        assert torch.equal(out["gather_dim0"], torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))


def test_column_and_row_linear(results):
    ref, ranks = results
    for out in ranks:
        assert out["column.shape"] == (12 // TP, 16)
        _close(out["column"], ref["column"])
        _close(out["row"], ref["row"])


@pytest.mark.parametrize("case", list(QKV_CASES))
def test_qkv_shards_heads_and_replicates_kv(results, case):
    ref, ranks = results
    nh, nkv = QKV_CASES[case]
    q_full, k_full, v_full = ref[case].split([nh * HEAD_DIM, nkv * HEAD_DIM, nkv * HEAD_DIM], dim=-1)
    for r, out in enumerate(ranks):
        heads, kv_heads, q_size, kv_size = out[f"{case}.sizes"]
        assert (heads, kv_heads) == (nh // TP, max(nkv // TP, 1))
        kv0 = kv_head_start(nkv, r, TP) * HEAD_DIM
        expected = torch.cat(
            [
                q_full[:, r * q_size : (r + 1) * q_size],
                k_full[:, kv0 : kv0 + kv_size],
                v_full[:, kv0 : kv0 + kv_size],
            ],
            dim=-1,
        )
        _close(out[case], expected)
        assert torch.equal(out[f"{case}.fused"], out[case])


def test_gate_up_linear(results):
    ref, ranks = results
    gate, up = ref["gate_up"].chunk(2, dim=-1)
    local = gate.shape[-1] // TP
    for r, out in enumerate(ranks):
        sl = slice(r * local, (r + 1) * local)
        _close(out["gate_up"], torch.cat([gate[:, sl], up[:, sl]], dim=-1))


def test_vocab_embedding_and_lm_heads_with_padded_vocab(results):
    ref, ranks = results
    assert VOCAB % TP != 0
    for out in ranks:
        assert out["embedding.shape"] == (-(-VOCAB // TP), 16)
        for key in ("embedding", "lm_head_untied", "lm_head_tied"):
            _close(out[key], ref[key])
        assert out["lm_head_tied"].dtype == torch.float32 and out["lm_head_tied"].shape[-1] == VOCAB


@pytest.mark.parametrize("model", ["qwen3", "llama"])
def test_tiny_models_match_unsharded_logits(results, model):
    ref, ranks = results
    assert ref[model][0].abs().max() > 0.5, "test model too weak to detect errors"
    for out in ranks:
        for got, expected in zip(out[model], ref[model], strict=True):  # prefill, then one decode step
            _close(got, expected)


def test_head_split_errors_name_the_flag_and_config():
    assert local_num_heads(16, tp=4) == 4 and local_num_kv_heads(8, tp=4) == 2
    assert local_num_kv_heads(2, tp=8) == 1 and kv_head_start(2, 5, 8) == 1
    with pytest.raises(
        ValueError, match=r"num_attention_heads \(14\) is not divisible by --tensor-parallel-size 4"
    ):
        local_num_heads(14, tp=4)
    with pytest.raises(
        ValueError, match=r"num_key_value_heads \(6\) is not divisible by --tensor-parallel-size 4"
    ):
        local_num_kv_heads(6, tp=4)
    with pytest.raises(ValueError, match=r"--tensor-parallel-size 6 .*num_key_value_heads \(4\)"):
        local_num_kv_heads(4, tp=6)


def test_single_rank_is_unchanged():
    assert tp_size() == 1
    x = torch.randn(3, 5)
    assert tp_all_reduce(x) is x and tp_all_gather(x) is x
    model = Qwen3ForCausalLM(
        Qwen3Config(**_TINY, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    )
    attn = model.model.layers[0].self_attn
    assert tuple(attn.qkv_proj.weight.shape) == ((4 + 2 * 2) * 16, 64)
    assert tuple(model.model.embed_tokens.weight.shape) == (VOCAB, 64)
    assert tuple(model.model.layers[0].mlp.down_proj.weight.shape) == (64, 96)
