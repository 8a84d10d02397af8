"""The fused exponential-race sampling kernel against its reference (TRITON_INTERPRET=1 on CPU, bf16/fp32 on a
GPU), and the reference against the softmax / q formulation it replaces."""

from __future__ import annotations

import os

import pytest
import torch

from inferd.kernels import reference

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()), reason="needs a CUDA GPU or TRITON_INTERPRET=1"
)


def _inputs(rows: int, vocab: int, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g, device=device) * 3
    temperature = torch.rand(rows, generator=g, device=device) + 0.2
    q = torch.empty(rows, vocab, device=device).exponential_(generator=g)
    return logits, temperature, q


def test_reference_equals_softmax_over_q() -> None:
    logits, temperature, q = _inputs(16, 1000, "cpu")
    expected = (torch.softmax(logits / temperature[:, None], dim=-1) / q).argmax(dim=-1)
    assert torch.equal(reference.temperature_race_sample(logits, temperature, q), expected)


def test_reference_keeps_masked_tokens_out_and_leaves_inputs() -> None:
    logits, temperature, q = _inputs(8, 300, "cpu")
    logits[:, ::2] = float("-inf")
    q[:, 5] = 0.0  # a zero draw must not pick a masked token or blow up
    before = (logits.clone(), q.clone())
    ids = reference.temperature_race_sample(logits, temperature, q)
    assert (ids % 2 == 1).all()
    assert torch.equal(logits, before[0]) and torch.equal(q, before[1])


@needs_triton
@pytest.mark.parametrize(("rows", "vocab"), [(1, 100), (3, 2049), (5, 5000), (2, 40000)])
def test_triton_matches_reference(rows: int, vocab: int) -> None:
    from inferd.kernels import triton_sampling

    device = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
    logits, temperature, q = _inputs(rows, vocab, device, seed=rows)
    logits[0, 7] = float("-inf")
    got = triton_sampling.temperature_race_sample(logits, temperature, q)
    assert torch.equal(got.cpu(), reference.temperature_race_sample(logits, temperature, q).cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [1, 7, 64, 256])
def test_triton_matches_reference_on_gpu_vocab_sizes(rows: int) -> None:
    from inferd.kernels import triton_sampling

    for vocab in (151936, 128256):
        logits, temperature, q = _inputs(rows, vocab, "cuda", seed=vocab + rows)
        got = triton_sampling.temperature_race_sample(logits, temperature, q)
        assert torch.equal(got, reference.temperature_race_sample(logits, temperature, q))
