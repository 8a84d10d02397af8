"""``decode_advance``: the Triton kernel (TRITON_INTERPRET=1 on CPU) equals the four torch ops of the reference,
and touches only the first n entries of the runner's buffers."""

from __future__ import annotations

import os

import pytest
import torch

from inferd.kernels import reference

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not (INTERPRET or torch.cuda.is_available()), reason="needs a CUDA GPU or TRITON_INTERPRET=1"
)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


def _buffers(size: int, n: int, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(input_ids, positions, seq_lens, slot_mapping) of ``size`` entries and (next_ids, next_slots) of n."""
    g = torch.Generator().manual_seed(size * 1000 + n)
    buffers = [
        torch.randint(0, 150000, (size,), generator=g),
        torch.randint(0, 4000, (size,), generator=g),
        torch.randint(1, 4000, (size,), generator=g, dtype=torch.int32),
        torch.randint(-1, 1 << 40, (size,), generator=g),  # slots past 2^32: int64 all the way
    ]
    nexts = [torch.randint(0, 150000, (n,), generator=g), torch.randint(0, 1 << 40, (n,), generator=g)]
    return [t.to(device) for t in buffers], [t.to(device) for t in nexts]


def test_reference_advances_the_first_n_entries() -> None:
    (ids, pos, lens, slots), (next_ids, next_slots) = _buffers(8, 5, "cpu")
    before = [t.clone() for t in (ids, pos, lens, slots)]
    reference.decode_advance(ids, pos, lens, slots, next_ids, next_slots)
    assert torch.equal(ids[:5], next_ids) and torch.equal(slots[:5], next_slots)
    assert torch.equal(pos[:5], before[1][:5] + 1) and torch.equal(lens[:5], before[2][:5] + 1)
    assert lens.dtype == torch.int32
    for now, then in zip((ids, pos, lens, slots), before, strict=True):
        assert torch.equal(now[5:], then[5:])


def test_reference_rejects_wrong_shapes_and_dtypes() -> None:
    (ids, pos, lens, slots), (next_ids, next_slots) = _buffers(4, 4, "cpu")
    advance = reference.decode_advance
    with pytest.raises(ValueError, match=r"seq_lens must be torch\.int32"):
        advance(ids, pos, lens.long(), slots, next_ids, next_slots)
    with pytest.raises(ValueError, match=r"next_slots must be torch\.int64"):
        advance(ids, pos, lens, slots, next_ids, next_slots.int())
    with pytest.raises(ValueError, match="next_ids and next_slots must both be"):
        advance(ids, pos, lens, slots, next_ids, next_slots[:3])
    with pytest.raises(ValueError, match="positions must be a contiguous 1-D buffer of at least n = 4"):
        advance(ids, pos[:3], lens, slots, next_ids, next_slots)
    with pytest.raises(ValueError, match="input_ids must be a contiguous"):
        advance(torch.zeros(8, dtype=torch.int64)[::2], pos, lens, slots, next_ids, next_slots)


@needs_triton
@pytest.mark.parametrize(("size", "n"), [(1, 1), (8, 3), (16, 16), (300, 257), (600, 0)])
def test_triton_equals_reference_and_leaves_the_rest(size: int, n: int) -> None:
    from inferd.kernels import triton_ops

    device = _device()
    buffers, nexts = _buffers(size, n, device)
    want = [t.clone() for t in buffers]
    before = [t.clone() for t in buffers]
    reference.decode_advance(*want, *nexts)
    triton_ops.decode_advance(*buffers, *nexts)
    for got, ref, then in zip(buffers, want, before, strict=True):
        assert got.dtype == then.dtype
        assert torch.equal(got, ref)
        assert torch.equal(got[n:], then[n:])


@needs_triton
def test_triton_rejects_what_the_reference_rejects() -> None:
    from inferd.kernels import triton_ops

    (ids, pos, lens, slots), (next_ids, next_slots) = _buffers(4, 4, _device())
    with pytest.raises(ValueError, match=r"seq_lens must be torch\.int32"):
        triton_ops.decode_advance(ids, pos, lens.long(), slots, next_ids, next_slots)
