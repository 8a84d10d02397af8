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


# ---------------------------------------------------------------------- rows that draw their own q
def _device() -> str:
    return "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


def _seed(value: int, device: str) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64, device=device)


def test_reference_q_rows_use_the_given_draws() -> None:
    logits, temperature, q = _inputs(5, 400, "cpu", seed=3)
    q_rows = torch.tensor([-1, 0, -1, 1, -1], dtype=torch.int32)
    want = reference.temperature_race_sample(logits, temperature, q)
    got = reference.temperature_race_sample(logits, temperature, q[[1, 3]], q_rows)
    assert torch.equal(got[[1, 3]], want[[1, 3]])
    with pytest.raises(ValueError, match="q_rows"):
        reference.temperature_race_sample(logits, temperature, q[:2])


@needs_triton
@pytest.mark.parametrize(("rows", "vocab"), [(3, 100), (4, 5000)])
def test_triton_q_rows_match_reference_bit_for_bit(rows: int, vocab: int) -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    logits, temperature, q = _inputs(rows, vocab, device, seed=vocab)
    seeded = [r for r in range(rows) if r % 2 == 1]
    q_rows = torch.full((rows,), -1, dtype=torch.int32, device=device)
    q_rows[seeded] = torch.arange(len(seeded), dtype=torch.int32, device=device)
    got = triton_sampling.temperature_race_sample(logits, temperature, q[seeded], q_rows, _seed(1, device))
    want = reference.temperature_race_sample(logits, temperature, q)
    assert torch.equal(got[seeded].cpu(), want[seeded].cpu())


@needs_triton
def test_triton_draws_are_deterministic_per_seed() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    logits = torch.zeros(4, 3000, device=device)  # uniform: the token is decided by the random draws alone
    temperature = torch.ones(4, device=device)
    sample = triton_sampling.temperature_race_sample
    first = sample(logits, temperature, seed=_seed(11, device))
    assert torch.equal(sample(logits, temperature, seed=_seed(11, device)), first)
    assert not torch.equal(sample(logits, temperature, seed=_seed(12, device)), first)
    assert len(set(first.tolist())) > 1  # rows have their own streams
    fresh = [sample(logits, temperature) for _ in range(2)]  # a new seed per call when none is given
    assert not torch.equal(fresh[0], fresh[1])


@needs_triton
@pytest.mark.parametrize(("rows", "splits", "max_splits"), [(1, 1, 1), (3, 5, 5), (4, 3, 37), (2, 64, 64)])
def test_pick_is_argmax_then_gather_first_split_on_ties(rows: int, splits: int, max_splits: int) -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    g = torch.Generator().manual_seed(rows * splits)
    best_val = torch.randint(-3, 3, (rows, splits), generator=g).float()  # few values: many ties
    best_val[0, splits // 2 :] = 9.0  # tie between the middle split and the ones after it
    if rows > 2:
        best_val[2] = float("-inf")  # a row with no finite score: split 0, as torch.argmax
    best_idx = torch.randint(0, 2**31 - 1, (rows, splits), generator=g, dtype=torch.int32)
    best_val, best_idx = best_val.to(device), best_idx.to(device)
    want = best_idx.gather(1, best_val.argmax(dim=1, keepdim=True)).squeeze(1).to(torch.int64)
    got = triton_sampling._pick(best_val, best_idx, max_splits, None)
    assert got.dtype == torch.int64 and torch.equal(got, want)


@needs_triton
def test_triton_ties_across_splits_pick_the_first_token_as_the_reference() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    rows, vocab = 3, 3 * 4096 + 5  # small batches split the vocabulary: several 4096-column splits per row
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(21)).clamp(max=4.0)
    logits[0, [100, 5000, 9000]] = 5.0  # equal maxima in splits 0, 1 and 2
    logits[1, [4200, vocab - 1]] = 7.0  # in splits 1 and 3, none in split 0
    logits[2] = 0.0  # every score ties
    temperature = torch.tensor([1.0, 0.5, 2.0])
    q = torch.ones(rows, vocab)  # log q = 0: scores are logits / T, ties stay ties
    logits, temperature, q = logits.to(device), temperature.to(device), q.to(device)
    got = triton_sampling.temperature_race_sample(logits, temperature, q)
    assert got.cpu().tolist() == [100, 4200, 0]
    assert torch.equal(got.cpu(), reference.temperature_race_sample(logits, temperature, q).cpu())


@needs_triton
def test_triton_advance_seed_steps_the_given_seed_only_when_asked() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    logits = torch.zeros(4, 6000, device=device)  # flat: the token is decided by the random draws alone
    temperature = torch.ones(4, device=device)
    sample = triton_sampling.temperature_race_sample
    state = _seed(1000, device)
    first = sample(logits, temperature, seed=state, advance_seed=True)
    assert int(state.item()) == (1000 + triton_sampling._SEED_STEP) & triton_sampling._SEED_MASK
    second = sample(logits, temperature, seed=state, advance_seed=True)
    assert not torch.equal(first, second)
    # The draws of a call are those of an explicit seed equal to the state it read.
    assert torch.equal(first, sample(logits, temperature, seed=_seed(1000, device)))
    given = _seed(123, device)
    once = sample(logits, temperature, seed=given)
    assert torch.equal(sample(logits, temperature, seed=given), once)
    assert given.item() == 123
    with pytest.raises(ValueError, match="advance_seed"):
        sample(logits, temperature, advance_seed=True)


def test_sampler_seed_follows_torch_manual_seed_and_advances() -> None:
    """The sampler's seed comes from torch's generator at its first random batch and changes at every call, so
    two samplers after the same ``torch.manual_seed`` draw the same tokens, step after step (either backend)."""
    from inferd.layers.sampler import Sampler
    from inferd.sampling_params import SamplingParams
    from inferd.worker.sampling_batch import SamplingBatch

    device = _device()
    logits = torch.zeros(4, 5000, device=device)

    batch = SamplingBatch(5000, torch.device(device))
    for i in range(4):
        batch.add_request(f"r{i}", SamplingParams(temperature=1.0), [0], [], None)
    ids = [f"r{i}" for i in range(4)]

    def run(manual_seed: int) -> list[list[int]]:
        torch.manual_seed(manual_seed)
        sampler = Sampler()
        return [sampler(logits, batch.make_metadata(ids)).sampled_token_ids.tolist() for _ in range(2)]

    a = run(7)
    assert a[0] != a[1]
    assert run(7) == a
    assert run(8) != a


@needs_triton
def test_triton_draws_do_not_depend_on_the_split_layout() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    logits = torch.randn(16, 20000, generator=torch.Generator().manual_seed(5)).to(device)
    temperature = torch.ones(16, device=device)
    batch = triton_sampling.temperature_race_sample(logits, temperature, seed=_seed(3, device))
    alone = triton_sampling.temperature_race_sample(logits[:1], temperature[:1], seed=_seed(3, device))
    assert batch[0] == alone[0]


@needs_triton
@pytest.mark.slow
def test_triton_draws_follow_the_softmax() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    rows = 512 if INTERPRET else 16384  # the interpreter samples some 20 rows a second
    row = torch.tensor([1.0, 0.5, -0.3, 1.6, 0.0, -0.6, 1.3, 0.2], device=device).bfloat16()
    temperature = torch.full((rows,), 0.7, device=device)
    ids = triton_sampling.temperature_race_sample(row.expand(rows, -1), temperature, seed=_seed(2024, device))
    observed = torch.bincount(ids.cpu(), minlength=8).double()
    expected = torch.softmax(row.double().cpu() / 0.7, dim=-1) * rows
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < 24.3, (observed, expected)  # 7 degrees of freedom, p = 0.001


@needs_triton
def test_triton_draws_skip_masked_tokens_and_padding_columns() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    vocab = 4100  # past one 4096-column block: the second block is mostly padding
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(7)).to(device).bfloat16()
    logits[:, ::2] = float("-inf")
    logits[5] = float("-inf")
    logits[5, vocab - 1] = 0.0  # the only finite token sits in the last, partial block
    temperature = torch.full((6,), 2.0, device=device)
    for seed in range(3):
        ids = triton_sampling.temperature_race_sample(logits, temperature, seed=_seed(seed, device)).cpu()
        assert (ids % 2 == 1).all() and (ids < vocab).all()
        assert ids[5] == vocab - 1


@needs_triton
def test_triton_bf16_logits_match_their_float32_values() -> None:
    from inferd.kernels import triton_sampling

    device = _device()
    logits, temperature, q = _inputs(3, 3000, device, seed=9)
    half = logits.bfloat16()
    sample = triton_sampling.temperature_race_sample
    assert torch.equal(sample(half, temperature, q), sample(half.float(), temperature, q))
    assert torch.equal(
        sample(half, temperature, seed=_seed(4, device)),
        sample(half.float(), temperature, seed=_seed(4, device)),
    )


@needs_triton
def test_sampler_seeded_rows_agree_between_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferd import kernels
    from inferd.kernels import triton_sampling
    from inferd.layers.sampler import Sampler
    from inferd.sampling_params import SamplingParams
    from inferd.worker.sampling_batch import SamplingBatch

    device = torch.device(_device())
    vocab = 700
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(1)).bfloat16().to(device)
    params = [
        SamplingParams(seed=8),
        SamplingParams(),
        SamplingParams(temperature=0.0),
        SamplingParams(seed=9),
    ]
    runs = []
    for race in (reference.temperature_race_sample, triton_sampling.temperature_race_sample):
        monkeypatch.setattr(kernels, "temperature_race_sample", race)
        batch = SamplingBatch(vocab, device)
        for i, sp in enumerate(params):
            batch.add_request(f"r{i}", sp, [0], [], None)
        md = batch.make_metadata([f"r{i}" for i in range(4)])
        runs.append([Sampler()(logits, md).sampled_token_ids.cpu() for _ in range(3)])
    for by_reference, by_triton in zip(*runs, strict=True):
        assert by_reference[[0, 2, 3]].tolist() == by_triton[[0, 2, 3]].tolist()
        assert by_triton[2] == logits[2].float().argmax().item()
