"""Asynchronous scheduling: a multi-step decode round is scheduled and queued while the previous one runs
(Scheduler.schedule_continuation). Outputs must equal the synchronous engine's token for token, whatever stops
mid-round, and no KV block may leak (CPU, tiny random models)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from inferd import LLM, SamplingParams
from inferd.engine.scheduler import Scheduler


def _llm(path: Path, async_scheduling: bool, **kw: object) -> LLM:
    return LLM(
        str(path),
        max_model_len=160,
        num_scheduler_steps=4,
        block_size=4,
        kv_cache_memory_bytes=64 << 20,  # several engines in one process also fit on a GPU
        async_scheduling=async_scheduling,
        **kw,
    )


def _count_continuations(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the rounds scheduled as continuations (the real method runs; only a counter is added)."""
    seen: Counter[str] = Counter()
    scheduler = llm.llm_engine.engine_core.scheduler
    original = Scheduler.schedule_continuation

    def counting(self: Scheduler, *args: object, **kwargs: object) -> object:
        out = original(self, *args, **kwargs)  # type: ignore[arg-type]
        seen["continued" if out is not None else "not"] += 1
        return out

    monkeypatch.setattr(scheduler, "schedule_continuation", counting.__get__(scheduler))
    return seen


def _stop_token(path: Path) -> int:
    """A token the tiny model emits often under greedy decoding, to make requests stop inside rounds."""
    llm = _llm(path, async_scheduling=False)
    outs = llm.generate(
        ["Hello", "The quick brown fox"], SamplingParams(temperature=0, max_tokens=24), use_tqdm=False
    )
    counts = Counter(t for o in outs for t in o.outputs[0].token_ids[2:])
    return counts.most_common(1)[0][0]


def test_async_equals_sync_with_stops_mid_round(tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = _stop_token(tiny_qwen3)
    prompts = ["Hello", "The quick brown fox", "Paris is", "1 2 3 4", "def f(x):", "a b c"] * 2
    # Length stops at every offset inside a round, token stops wherever the model emits ``stop``, seeded sampling.
    params = [
        SamplingParams(
            temperature=0 if i % 3 else 0.9,
            seed=None if i % 3 else 100 + i,
            max_tokens=5 + 3 * i,
            stop_token_ids=[stop] if i % 2 else None,
        )
        for i in range(len(prompts))
    ]
    results = {}
    for mode in (False, True):
        llm = _llm(tiny_qwen3, async_scheduling=mode)
        seen = _count_continuations(llm, monkeypatch)
        outs = llm.generate(prompts, params, use_tqdm=False)
        results[mode] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in outs]
        assert llm.llm_engine.engine_core.scheduler.kv_cache_manager.usage == 0.0
        assert llm.llm_engine.engine_core._next_round is None
        if mode:
            assert seen["continued"] > 0
        else:
            assert not seen
    assert results[True] == results[False]
    assert any(reason == "stop" for _, reason in results[True])
    for (tokens, reason), p in zip(results[True], params):
        assert len(tokens) <= p.max_tokens
        if reason == "length":
            assert len(tokens) == p.max_tokens


def test_a_queued_round_whose_requests_all_stopped_is_drained(tiny_qwen3: Path) -> None:
    """The last requests stop on a token while the next round is queued: the engine waits for that round before
    it reports nothing left to do, so no round lingers into the next request."""
    stop = _stop_token(tiny_qwen3)
    llm = _llm(tiny_qwen3, async_scheduling=True)
    params = SamplingParams(temperature=0, max_tokens=60, stop_token_ids=[stop])
    outs = llm.generate(["Hello", "The quick brown fox"], params, use_tqdm=False)
    assert all(o.outputs[0].finish_reason == "stop" for o in outs)
    core = llm.llm_engine.engine_core
    assert core._next_round is None and core.scheduler.kv_cache_manager.usage == 0.0
    again = llm.generate(["Hello"], params, use_tqdm=False)
    assert again[0].outputs[0].token_ids == outs[0].outputs[0].token_ids


def test_async_abort_and_new_requests_between_rounds(tiny_qwen3: Path) -> None:
    """Requests aborted while a continued round is queued, and requests added then, end cleanly."""
    llm = _llm(tiny_qwen3, async_scheduling=True)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    for i in range(4):
        engine.add_request(f"r{i}", f"prompt number {i}", params)
    finished: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.outputs[0].token_ids
        steps += 1
        if steps == 4:
            assert engine.engine_core._next_round is not None  # a round is queued right now
            engine.abort_request(["r1"])
            engine.add_request("late", "a late prompt", params)
    assert set(finished) == {"r0", "r2", "r3", "late"}
    assert all(len(t) == 40 for t in finished.values())
    assert engine.engine_core.scheduler.kv_cache_manager.usage == 0.0
    # The late request's tokens equal a run of it alone.
    alone = _llm(tiny_qwen3, async_scheduling=False).generate(["a late prompt"], params, use_tqdm=False)
    assert finished["late"] == alone[0].outputs[0].token_ids
