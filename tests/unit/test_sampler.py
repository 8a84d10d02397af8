"""Sampler + SamplingBatch: what a user of the sampling parameters can observe."""

from __future__ import annotations

import math

import pytest
import torch

from inferd.layers.sampler import (
    LogprobsTensors,
    Sampler,
    apply_penalties,
    apply_top_k_top_p,
    compute_prompt_logprobs,
    logprobs_to_lists,
)
from inferd.sampling_params import SamplingParams
from inferd.worker.sampling_batch import SamplingBatch

PROBS4 = [0.1, 0.2, 0.3, 0.4]


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
            ],
        ),
    ]
)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def make_batch(
    device: torch.device,
    params: list[SamplingParams],
    vocab_size: int,
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    eos_token_id: int | None = None,
    ids: list[str] | None = None,
) -> tuple[SamplingBatch, list[str]]:
    batch = SamplingBatch(vocab_size, device)
    ids = ids or [f"r{i}" for i in range(len(params))]
    for i, (rid, sp) in enumerate(zip(ids, params, strict=True)):
        prompt = prompts[i] if prompts else [0]
        out = outputs[i] if outputs else []
        batch.add_request(rid, sp, prompt, out, eos_token_id)
    return batch, ids


def sample(batch: SamplingBatch, ids: list[str], logits: torch.Tensor) -> torch.Tensor:
    out = Sampler()(logits.to(batch.device), batch.make_metadata(ids))
    return out.sampled_token_ids.cpu()


def frequencies(device: torch.device, sp: SamplingParams, probs: list[float], n: int = 4000) -> list[float]:
    """Empirical token frequencies of n rows sampled from ``probs`` with ``sp``."""
    batch, ids = make_batch(device, [sp] * n, len(probs))
    logits = torch.tensor(probs).log().expand(n, -1)
    counts = torch.bincount(sample(batch, ids, logits), minlength=len(probs))
    return (counts.float() / n).tolist()


def normalized(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


def assert_close_freqs(got: list[float], want: list[float], tol: float = 0.035) -> None:
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) < tol, (got, want)


# ---------------------------------------------------------------------- greedy and filters
def test_greedy_is_argmax(device: torch.device) -> None:
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    batch, ids = make_batch(device, [SamplingParams(temperature=0.0)] * 5, 50)
    assert torch.equal(sample(batch, ids, logits), logits.argmax(-1))
    assert batch.make_metadata(ids).all_greedy


def test_bf16_logits_are_accepted(device: torch.device) -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    batch, ids = make_batch(
        device, [SamplingParams(temperature=0.0), SamplingParams(top_k=1), SamplingParams()], 50
    )
    got = sample(batch, ids, logits.bfloat16())
    assert torch.equal(got[:2], logits.bfloat16().float().argmax(-1)[:2])


def test_top_k_1_and_tiny_top_p_are_greedy(device: torch.device) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(top_k=1, temperature=1.5)] * 3 + [
        SamplingParams(top_p=1e-6, temperature=1.5)
    ] * 3
    batch, ids = make_batch(device, params, 100)
    for _ in range(5):
        assert torch.equal(sample(batch, ids, logits), logits.argmax(-1))


def test_mixed_greedy_and_random_rows(device: torch.device) -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)] * 2
    batch, ids = make_batch(device, params, 30)
    md = batch.make_metadata(ids)
    assert not md.all_greedy and not md.all_random
    got = sample(batch, ids, logits)
    assert got[0] == logits[0].argmax() and got[2] == logits[2].argmax()


def test_greedy_on_bf16_logits_matches_their_float32_argmax(device: torch.device) -> None:
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(12)).bfloat16()
    logits[0, 7] = logits[0, 250] = logits[0].max() + 1  # ties: the first index wins, as on float32
    batch, ids = make_batch(device, [SamplingParams(temperature=0.0)] * 4, 300)
    got = sample(batch, ids, logits)
    assert torch.equal(got, logits.float().argmax(-1)) and got[0] == 7


def test_mixed_greedy_and_random_rows_on_bf16_logits(device: torch.device) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(13)).bfloat16()
    logits[4] = float("-inf")
    logits[4, 9] = 0.0  # a random row with one allowed token
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8), SamplingParams(seed=3)] * 2
    batch, ids = make_batch(device, params, 40)
    got = sample(batch, ids, logits)
    want = logits.float().argmax(-1)
    assert got[0] == want[0] and got[3] == want[3] and got[4] == 9


def test_temperature_only_sampling_passes_the_logits_uncopied(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferd import kernels

    seen: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    race = kernels.temperature_race_sample

    def spy(logits, temperature, q=None, q_rows=None, seed=None, advance_seed=False):  # type: ignore[no-untyped-def]
        seen.append((logits, q, q_rows))
        return race(logits, temperature, q, q_rows, seed, advance_seed)

    monkeypatch.setattr(kernels, "temperature_race_sample", spy)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(14)).bfloat16().to(device)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.2),
    ]
    batch, ids = make_batch(device, params, 50)
    Sampler()(logits, batch.make_metadata(ids))
    got_logits, q, q_rows = seen[-1]
    assert got_logits.data_ptr() == logits.data_ptr() and got_logits.dtype == torch.bfloat16
    assert q is None and q_rows is None  # unseeded rows draw inside the kernel: no [B, V] draws

    params[1] = SamplingParams(temperature=0.7, seed=5)
    batch, ids = make_batch(device, params, 50)
    Sampler()(logits, batch.make_metadata(ids))
    _, q, q_rows = seen[-1]
    assert q is not None and q.shape == (1, 50)  # only the seeded row's draws
    assert q_rows is not None and q_rows.cpu().tolist() == [-1, 0, -1]


def test_temperature_reaches_the_kernel_as_given_without_greedy_rows(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferd import kernels

    seen: list[torch.Tensor] = []
    race = kernels.temperature_race_sample

    def spy(logits, temperature, q=None, q_rows=None, seed=None, advance_seed=False):  # type: ignore[no-untyped-def]
        seen.append(temperature)
        return race(logits, temperature, q, q_rows, seed, advance_seed)

    monkeypatch.setattr(kernels, "temperature_race_sample", spy)
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(15)).to(device)
    batch, ids = make_batch(device, [SamplingParams(temperature=0.7), SamplingParams(temperature=1.2)], 50)
    md = batch.make_metadata(ids)
    assert md.all_random
    Sampler()(logits, md)
    assert seen[-1] is md.temperature  # no greedy row: no torch.where on the temperatures

    batch, ids = make_batch(device, [SamplingParams(temperature=0.0), SamplingParams(temperature=1.2)], 50)
    md = batch.make_metadata(ids)
    Sampler()(logits, md)
    assert seen[-1].cpu().tolist() == pytest.approx([1.0, 1.2])  # the greedy row's 0 is replaced


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_shapes_the_distribution(device: torch.device, temperature: float) -> None:
    torch.manual_seed(0)
    got = frequencies(device, SamplingParams(temperature=temperature), PROBS4)
    want = normalized([p ** (1.0 / temperature) for p in PROBS4])
    assert_close_freqs(got, want)


def test_top_k_keeps_k_best(device: torch.device) -> None:
    torch.manual_seed(0)
    got = frequencies(device, SamplingParams(top_k=2), PROBS4)
    assert_close_freqs(got, normalized([0.0, 0.0, 0.3, 0.4]))
    assert got[0] == 0.0 and got[1] == 0.0


def test_top_p_keeps_smallest_nucleus(device: torch.device) -> None:
    torch.manual_seed(0)
    got = frequencies(device, SamplingParams(top_p=0.65), PROBS4)  # 0.4 + 0.3 ≥ 0.65
    assert got[0] == 0.0 and got[1] == 0.0
    assert_close_freqs(got, normalized([0.0, 0.0, 0.3, 0.4]))


def test_top_k_with_top_p(device: torch.device) -> None:
    torch.manual_seed(0)
    got = frequencies(device, SamplingParams(top_k=3, top_p=0.65), PROBS4)
    assert got[0] == 0.0 and got[1] == 0.0
    assert_close_freqs(got, normalized([0.0, 0.0, 0.3, 0.4]))


def test_filters_apply_only_to_their_rows(device: torch.device) -> None:
    torch.manual_seed(0)
    n = 3000
    params = [SamplingParams(top_k=2), SamplingParams(), SamplingParams(top_p=0.35)] * n
    batch, ids = make_batch(device, params, 4)
    md = batch.make_metadata(ids)
    assert md.filter_rows is not None and md.max_top_k == 0  # a top-p row without top-k: sort path
    toks = sample(batch, ids, torch.tensor(PROBS4).log().expand(3 * n, -1)).view(n, 3)
    freqs = [(torch.bincount(toks[:, j], minlength=4).float() / n).tolist() for j in range(3)]
    assert_close_freqs(freqs[0], normalized([0.0, 0.0, 0.3, 0.4]))
    assert_close_freqs(freqs[1], PROBS4)
    assert freqs[2] == [0.0, 0.0, 0.0, 1.0]


def test_top_k_first_path_matches_full_sort(device: torch.device) -> None:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 300, generator=g).to(device)
    top_k = torch.tensor([1, 5, 17, 40, 40, 3], device=device)
    top_p = torch.tensor([1.0, 0.5, 0.9, 0.99, 1.0, 0.2], device=device)
    for p in (None, top_p):
        by_sort, by_topk = logits.clone(), logits.clone()
        apply_top_k_top_p(by_sort, top_k, p)
        apply_top_k_top_p(by_topk, top_k, p, max_top_k=40)
        assert torch.equal(by_sort.isfinite(), by_topk.isfinite())
        assert torch.equal(by_sort[by_sort.isfinite()], logits[by_sort.isfinite()])


def test_min_p_drops_unlikely_tokens(device: torch.device) -> None:
    torch.manual_seed(0)
    probs = [0.05, 0.15, 0.3, 0.5]
    got = frequencies(device, SamplingParams(min_p=0.2), probs)  # threshold 0.1
    assert got[0] == 0.0
    assert_close_freqs(got, normalized([0.0, 0.15, 0.3, 0.5]))


# ---------------------------------------------------------------------- penalties, bias, min_tokens
def penalized_logits(
    device: torch.device, sp: SamplingParams, logits: list[float], prompt: list[int], outputs: list[int]
) -> torch.Tensor:
    """``logits`` after apply_penalties with the metadata SamplingBatch builds for one request."""
    batch, ids = make_batch(device, [sp], len(logits), [prompt], [outputs])
    md = batch.make_metadata(ids)
    x = torch.tensor([logits], device=device)
    apply_penalties(x, md)
    return x.cpu()[0]


def test_repetition_penalty_matches_hand_computation(device: torch.device) -> None:
    sp = SamplingParams(repetition_penalty=2.0, temperature=0.0)
    got = penalized_logits(device, sp, [2.0, -1.0, 0.5, 1.0, -3.0], prompt=[0], outputs=[1, 1])
    assert got.tolist() == [1.0, -2.0, 0.5, 1.0, -3.0]


def test_frequency_and_presence_penalties_match_hand_computation(device: torch.device) -> None:
    logits = [1.0, 1.0, 1.0, 1.0]
    got = penalized_logits(device, SamplingParams(frequency_penalty=0.5), logits, [0], [2, 2, 3])
    assert got.tolist() == [1.0, 1.0, 0.0, 0.5]  # the prompt token 0 is not penalized
    got = penalized_logits(device, SamplingParams(presence_penalty=0.5), logits, [0], [2, 2, 3])
    assert got.tolist() == [1.0, 1.0, 0.5, 0.5]


def test_penalties_follow_appended_tokens_and_flip_greedy_choice(device: torch.device) -> None:
    sp = SamplingParams(temperature=0.0, frequency_penalty=0.6)
    batch, ids = make_batch(device, [sp, SamplingParams(temperature=0.0)], 3)
    logits = torch.tensor([[1.0, 0.5, -5.0]] * 2)
    seen = []
    for _ in range(4):
        toks = sample(batch, ids, logits)
        seen.append(toks[0].item())
        assert toks[1] == 0  # the unpenalized row is unaffected
        for rid, t in zip(ids, toks.tolist(), strict=True):
            batch.append_output_token(rid, t)
    # 1.0 vs 0.5: after one 0 → 0.4 < 0.5 → pick 1; then 0.4 vs -0.1 → 0; then -0.2 vs -0.1 → 1
    assert seen == [0, 1, 0, 1]


def test_greedy_with_penalties_is_deterministic(device: torch.device) -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(4))
    sp = SamplingParams(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.2, frequency_penalty=0.3)
    runs = []
    for _ in range(2):
        batch, ids = make_batch(device, [sp] * 3, 40, prompts=[[1, 2, 3]] * 3)
        toks = []
        for _ in range(6):
            t = sample(batch, ids, logits)
            toks.append(t.tolist())
            for rid, tok in zip(ids, t.tolist(), strict=True):
                batch.append_output_token(rid, tok)
        runs.append(toks)
    assert runs[0] == runs[1]


def test_logit_bias_forces_a_token(device: torch.device) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 20, generator=torch.Generator().manual_seed(5))
    weakest = logits.argmin(-1).tolist()
    params = [
        SamplingParams(temperature=0.0, logit_bias={weakest[0]: 100.0}),
        SamplingParams(temperature=1.0, logit_bias={weakest[1]: 100.0}),
    ]
    batch, ids = make_batch(device, params, 20)
    assert sample(batch, ids, logits).tolist() == weakest


def test_logit_bias_outside_vocab_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        make_batch(torch.device("cpu"), [SamplingParams(logit_bias={50: 1.0})], 50)


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_masks_eos_and_stop_ids(device: torch.device, ignore_eos: bool) -> None:
    eos, stop = 3, 2
    sp = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[stop], ignore_eos=ignore_eos)
    batch, ids = make_batch(device, [sp], 5, eos_token_id=eos)
    logits_eos_best = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.5]])
    logits_stop_best = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5]])
    # The stop id is always masked; eos only without ignore_eos.
    assert sample(batch, ids, logits_eos_best).item() == (eos if ignore_eos else 1)
    assert sample(batch, ids, logits_stop_best).item() == (eos if ignore_eos else 1)
    batch.append_output_token(ids[0], 1)
    assert sample(batch, ids, logits_stop_best).item() == (eos if ignore_eos else 1)
    batch.append_output_token(ids[0], 1)
    # min_tokens reached: nothing masked any more
    assert sample(batch, ids, logits_eos_best).item() == eos
    assert sample(batch, ids, logits_stop_best).item() == stop


# ---------------------------------------------------------------------- seeds
def seeded_tokens(
    device: torch.device,
    row_logits: torch.Tensor,
    others: list[SamplingParams],
    position: int,
    steps: int = 5,
) -> list[int]:
    params = list(others)
    params.insert(position, SamplingParams(seed=1234, temperature=1.0))
    batch, ids = make_batch(device, params, row_logits.shape[-1])
    other_logits = torch.randn(len(params), row_logits.shape[-1], generator=torch.Generator().manual_seed(9))
    other_logits[position] = row_logits
    got = []
    for _ in range(steps):
        got.append(sample(batch, ids, other_logits)[position].item())
    return got


def test_seeded_row_is_independent_of_the_batch(device: torch.device) -> None:
    row = torch.zeros(1000)  # uniform: every draw depends on the random stream only
    alone = seeded_tokens(device, row, [], 0)
    assert len(set(alone)) > 1
    others = [
        SamplingParams(seed=7),
        SamplingParams(),
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=5),
    ]
    assert seeded_tokens(device, row, others, 0) == alone
    assert seeded_tokens(device, row, others, 2) == alone
    assert seeded_tokens(device, row, others, 4) == alone
    torch.manual_seed(123)  # the global generator does not matter either
    assert seeded_tokens(device, row, others[1:2], 1) == alone


def test_seeded_requests_repeat_with_fresh_generators(device: torch.device) -> None:
    logits = torch.zeros(5, 500).bfloat16()  # uniform: every draw depends on the random stream only
    params = [
        SamplingParams(seed=21, temperature=0.9),
        SamplingParams(temperature=0.9),
        SamplingParams(temperature=0.0),
        SamplingParams(seed=22, temperature=1.1),
        SamplingParams(temperature=1.0),
    ]
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        batch, ids = make_batch(device, params, 500)
        runs.append([sample(batch, ids, logits) for _ in range(3)])
    for first, second in zip(*runs, strict=True):
        assert first[0] == second[0] and first[3] == second[3]
    assert len({int(step[0]) for step in runs[0]}) > 1


def test_seeded_stream_survives_preemption(device: torch.device) -> None:
    sp = SamplingParams(seed=42, temperature=1.0)
    logits = torch.zeros(1, 1000)

    batch, ids = make_batch(device, [sp], 1000)
    straight = []
    for _ in range(6):
        t = sample(batch, ids, logits).item()
        straight.append(t)
        batch.append_output_token(ids[0], t)

    batch, ids = make_batch(device, [sp], 1000)
    resumed = []
    for step in range(6):
        if step == 3:
            batch.remove_request(ids[0], finished=False)
            batch.add_request(ids[0], sp, [0], resumed, None)
        t = sample(batch, ids, logits).item()
        resumed.append(t)
        batch.append_output_token(ids[0], t)
    assert resumed == straight

    batch.remove_request(ids[0])  # finished: a new request with the same id starts the stream again
    batch.add_request(ids[0], sp, [0], [], None)
    assert sample(batch, ids, logits).item() == straight[0]


def test_preempted_request_keeps_its_penalty_counts(device: torch.device) -> None:
    sp = SamplingParams(temperature=0.0, frequency_penalty=1.0)
    batch, ids = make_batch(device, [sp], 4)
    batch.append_output_token(ids[0], 2)
    batch.remove_request(ids[0], finished=False)
    batch.add_request(ids[0], sp, [0], [2, 3, 3], None)
    counts = batch.make_metadata(ids).output_counts
    assert counts is not None and counts.cpu().tolist() == [[0, 0, 1, 2]]


# ---------------------------------------------------------------------- logprobs
def test_logprobs_are_raw_model_logprobs_with_ranks(device: torch.device) -> None:
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(6))
    forced = logits[0].argsort()[10].item()  # 20th best token, forced by logit_bias
    params = [
        SamplingParams(temperature=0.0, logprobs=3, logit_bias={forced: 100.0}, repetition_penalty=1.5),
        SamplingParams(temperature=0.7, logprobs=1),
    ]
    batch, ids = make_batch(device, params, 30, prompts=[[1, 2], [3]])
    md = batch.make_metadata(ids)
    assert md.max_num_logprobs == 3
    out = Sampler()(logits.to(device), md)
    assert out.logprobs is not None
    lp = LogprobsTensors(
        *(x.cpu() for x in (out.logprobs.token_ids, out.logprobs.logprobs, out.logprobs.ranks))
    )
    raw = torch.log_softmax(logits, -1)
    sampled = out.sampled_token_ids.cpu()
    assert sampled[0] == forced
    assert lp.token_ids.shape == (2, 4)
    assert torch.equal(lp.token_ids[:, 0], sampled)
    torch.testing.assert_close(lp.logprobs, raw.gather(1, lp.token_ids))
    assert torch.equal(lp.token_ids[:, 1:], raw.topk(3, -1).indices)
    assert (lp.logprobs[:, 1:].diff(dim=1) <= 0).all()
    assert lp.ranks[0].item() == 20
    assert lp.ranks[1].item() == int((raw[1] > raw[1, sampled[1]]).sum()) + 1

    lists = logprobs_to_lists(out.logprobs, [3, 1])
    assert lists[0].token_ids == lp.token_ids[0].tolist() and lists[0].rank == 20
    assert lists[1].token_ids == lp.token_ids[1, :2].tolist()
    assert lists[1].logprobs == lp.logprobs[1, :2].tolist()


def test_no_logprobs_when_none_asked(device: torch.device) -> None:
    batch, ids = make_batch(device, [SamplingParams()], 10)
    assert batch.max_num_logprobs(ids) is None
    assert Sampler()(torch.zeros(1, 10, device=device), batch.make_metadata(ids)).logprobs is None


def test_logprobs_zero_gives_only_the_chosen_token(device: torch.device) -> None:
    batch, ids = make_batch(device, [SamplingParams(temperature=0.0, logprobs=0)], 10)
    logits = torch.arange(10.0).unsqueeze(0)
    out = Sampler()(logits.to(device), batch.make_metadata(ids))
    assert out.logprobs is not None
    [tl] = logprobs_to_lists(out.logprobs, [0])
    assert tl.token_ids == [9] and tl.rank == 1
    assert math.isclose(tl.logprobs[0], torch.log_softmax(logits, -1)[0, 9].item(), rel_tol=1e-6)


def test_compute_prompt_logprobs(device: torch.device) -> None:
    logits = torch.randn(7, 25, generator=torch.Generator().manual_seed(8))
    targets = torch.tensor([0, 5, 24, 3, 3, 10, 1])
    t = compute_prompt_logprobs(logits.to(device).bfloat16().float(), targets.to(device), 2)
    raw = torch.log_softmax(logits.bfloat16().float(), -1)
    assert t.token_ids.shape == (7, 3)
    assert torch.equal(t.token_ids[:, 0].cpu(), targets)
    torch.testing.assert_close(t.logprobs.cpu(), raw.gather(1, t.token_ids.cpu()))
    want_ranks = (raw > raw.gather(1, targets.unsqueeze(1))).sum(-1) + 1
    assert torch.equal(t.ranks.cpu(), want_ranks)
    lists = logprobs_to_lists(t, [2, 0, 1, 5, 2, 2, 2])
    assert [len(x.token_ids) for x in lists] == [3, 1, 2, 3, 3, 3, 3]
    assert lists[2].token_ids == t.token_ids[2, :2].tolist()
    assert all(isinstance(i, int) for x in lists for i in x.token_ids)


def test_logprobs_to_lists_checks_row_count() -> None:
    t = compute_prompt_logprobs(torch.zeros(2, 4), torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="one per row"):
        logprobs_to_lists(t, [1])


# ---------------------------------------------------------------------- batch bookkeeping
def test_metadata_rows_follow_req_ids_and_flags(device: torch.device) -> None:
    params = {
        "a": SamplingParams(temperature=0.5, top_k=3),
        "b": SamplingParams(temperature=0.0),
        "c": SamplingParams(top_p=0.9, min_p=0.1, seed=3),
    }
    batch = SamplingBatch(10, device)
    for rid, sp in params.items():
        batch.add_request(rid, sp, [1], [], None)
    md = batch.make_metadata(["c", "a", "b"])
    assert md.temperature.cpu().tolist() == [1.0, 0.5, 0.0]
    assert md.top_k.cpu().tolist() == [0, 3, 0]
    assert not md.no_top_k and not md.no_top_p and not md.no_min_p and md.no_penalties
    assert set(md.generators) == {0}
    batch.remove_request("c")
    md = batch.make_metadata(["a", "b"])
    assert md.no_top_p and md.no_min_p and md.generators == {}
    batch.remove_request("unknown")  # ignored
    assert len(batch) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_forward_makes_no_host_sync_on_cuda() -> None:
    device = torch.device("cuda")
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.2, logprobs=2),
        SamplingParams(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05, logit_bias={1: 2.0}),
        SamplingParams(seed=5, frequency_penalty=0.5, presence_penalty=0.5, min_tokens=3),
        SamplingParams(),
    ]
    batch, ids = make_batch(
        device, params, 64, prompts=[[1, 2, 3]] * 4, outputs=[[4], [], [5], []], eos_token_id=0
    )
    md = batch.make_metadata(ids)
    assert md.min_tokens is not None and md.logit_bias is not None and not md.no_penalties
    logits = torch.randn(4, 64, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = Sampler()(logits, md)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.sampled_token_ids.shape == (4,)
