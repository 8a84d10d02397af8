"""Scheduler behaviour on CPU with hand-built model-runner outputs (no model)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inferd.config import CacheConfig, SchedulerConfig
from inferd.engine.core_types import EngineCoreOutputs, TokenLogprobs
from inferd.engine.request import Request, RequestStatus
from inferd.engine.scheduler import Scheduler
from inferd.engine.scheduler_output import SchedulerOutput
from inferd.sampling_params import SamplingParams
from inferd.worker.model_runner_output import ModelRunnerOutput

EOS = 2


def make_scheduler(
    num_blocks: int = 100,
    block_size: int = 16,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 512,
    max_model_len: int = 256,
    enable_chunked_prefill: bool = True,
    enable_prefix_caching: bool = True,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=enable_chunked_prefill,
        ),
        CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching),
        num_blocks=num_blocks,
    )


def make_req(
    req_id: str, prompt: list[int], max_model_len: int = 256, eos: int | None = EOS, **params: object
) -> Request:
    return Request(req_id, prompt, SamplingParams(**params), eos_token_id=eos, max_model_len=max_model_len)


def run_step(
    sched: Scheduler, sample: Callable[[str], int] = lambda _: 7
) -> tuple[SchedulerOutput, EngineCoreOutputs]:
    """One engine step with a fake runner that samples ``sample(req_id)`` when a request reaches its end."""
    out = sched.schedule()
    sampled = []
    for req_id, n in out.num_scheduled_tokens.items():
        req = sched.get_request(req_id)
        done = req is not None and req.num_computed_tokens + n == req.num_tokens
        sampled.append([sample(req_id)] if done else [])
    runner = ModelRunnerOutput(req_ids=list(out.num_scheduled_tokens), sampled_token_ids=sampled)
    return out, sched.update_from_output(out, runner)


def outputs_by_id(outs: EngineCoreOutputs) -> dict[str, list[int]]:
    return {o.req_id: o.new_token_ids for o in outs.outputs}


# ---------------------------------------------------------------------------------------------- scheduling
def test_chunked_prefill_with_a_small_budget() -> None:
    sched = make_scheduler(max_num_batched_tokens=16)
    sched.add_request(make_req("a", list(range(10, 50)), max_tokens=2))
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 16}
    assert len(out.scheduled_new_reqs) == 1 and out.scheduled_new_reqs[0].block_ids == [1]
    assert outs.outputs == []  # partial prefill: nothing to report
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 16}
    assert out.scheduled_cached_reqs[0].new_block_ids == [2]
    assert out.scheduled_cached_reqs[0].num_computed_tokens == 16
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 8}
    assert outputs_by_id(outs) == {"a": [7]}
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 1}
    assert outs.outputs[0].finish_reason == "length"
    assert not sched.has_unfinished_requests()


def test_without_chunked_prefill_a_prompt_waits_for_a_whole_budget() -> None:
    sched = make_scheduler(max_num_batched_tokens=32, enable_chunked_prefill=False)
    sched.add_request(make_req("a", list(range(20)), max_tokens=5))
    sched.add_request(make_req("b", list(range(100, 120)), max_tokens=5))
    out, _ = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 20}  # b's 20 tokens don't fit in the 12 left
    out, _ = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 1, "b": 20}
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        sched.add_request(make_req("c", list(range(40))))


def test_without_chunked_prefill_a_resumed_request_longer_than_the_budget_is_chunked() -> None:
    sched = make_scheduler(
        num_blocks=9, block_size=4, max_num_batched_tokens=8, max_model_len=32, enable_chunked_prefill=False
    )
    sched.add_request(make_req("x", [1, 2], max_model_len=32, max_tokens=20))
    sched.add_request(make_req("a", [3] * 6, max_model_len=32, max_tokens=20))
    counts: dict[str, int] = {"x": 0, "a": 0}
    resumed_chunk = None
    for _ in range(200):
        out, outs = run_step(sched)
        for new in out.scheduled_new_reqs:
            if new.output_token_ids:
                resumed_chunk = (out.num_scheduled_tokens[new.req_id], len(new.output_token_ids) + 6)
        for o in outs.outputs:
            counts[o.req_id] += len(o.new_token_ids)
        if not sched.has_unfinished_requests():
            break
    assert resumed_chunk is not None and resumed_chunk[0] <= 8 < resumed_chunk[1]
    assert counts == {"x": 20, "a": 20}


def test_decode_and_prefill_mixed_in_one_step() -> None:
    sched = make_scheduler()
    sched.add_request(make_req("a", list(range(10)), max_tokens=5))
    run_step(sched)
    sched.add_request(make_req("b", list(range(100, 130)), max_tokens=5))
    out, outs = run_step(sched)
    assert list(out.num_scheduled_tokens.items()) == [("a", 1), ("b", 30)]  # running first
    assert out.total_num_scheduled_tokens == 31
    assert [r.req_id for r in out.scheduled_cached_reqs] == ["a"]
    assert [r.req_id for r in out.scheduled_new_reqs] == ["b"]
    assert out.scheduled_new_reqs[0].prompt_token_ids == list(range(100, 130))
    assert out.scheduled_new_reqs[0].eos_token_id == EOS
    assert outputs_by_id(outs) == {"a": [7], "b": [7]}


def test_max_num_seqs_limits_the_running_set() -> None:
    sched = make_scheduler(max_num_seqs=2)
    for i, max_tokens in enumerate((1, 3, 3)):
        sched.add_request(make_req(f"r{i}", [i + 10] * 5, max_tokens=max_tokens))
    out, outs = run_step(sched)
    assert list(out.num_scheduled_tokens) == ["r0", "r1"]
    assert outs.outputs[0].finish_reason == "length" and outs.scheduler_stats.num_waiting_reqs == 1
    out, _ = run_step(sched)
    assert list(out.num_scheduled_tokens) == ["r1", "r2"]
    assert out.finished_req_ids == {"r0"}


def test_waiting_requests_are_served_in_arrival_order() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)  # 12 token slots
    sched.add_request(make_req("big", list(range(10)), max_tokens=1))
    sched.add_request(make_req("huge", list(range(100, 112)), max_tokens=1))
    sched.add_request(make_req("small", [1], max_tokens=1))
    out, _ = run_step(sched)
    assert list(out.num_scheduled_tokens) == ["big"]  # "small" would fit but must not jump over "huge"
    out, _ = run_step(sched)
    assert list(out.num_scheduled_tokens) == ["huge"]


def test_preempted_request_resumes_with_prompt_and_outputs() -> None:
    # 4 usable blocks of 4 tokens; two 6-token prompts take 2 blocks each, the first decode past 8 tokens preempts.
    sched = make_scheduler(num_blocks=5, block_size=4, enable_prefix_caching=False)
    sched.add_request(make_req("a", [1] * 6, max_tokens=6))
    sched.add_request(make_req("b", [3] * 6, max_tokens=6))
    counter = {"a": 100, "b": 200}

    def sample(req_id: str) -> int:
        counter[req_id] += 1
        return counter[req_id]

    emitted: dict[str, list[int]] = {"a": [], "b": []}
    finish: dict[str, str] = {}
    preempted_at = None
    resumed = None
    for step in range(40):
        out, outs = run_step(sched, sample)
        if out.preempted_req_ids and preempted_at is None:
            preempted_at = step
            assert out.preempted_req_ids == {"b"}
            assert "b" not in out.num_scheduled_tokens and out.num_scheduled_tokens["a"] == 1
            assert out.finished_req_ids == set()
        for new in out.scheduled_new_reqs:
            if new.req_id == "b" and preempted_at is not None:
                resumed = new
        for o in outs.outputs:
            emitted[o.req_id] += o.new_token_ids
            if o.finished:
                finish[o.req_id] = o.finish_reason
        if not sched.has_unfinished_requests():
            break
    assert preempted_at is not None and resumed is not None
    assert resumed.prompt_token_ids == [3] * 6
    assert resumed.output_token_ids == [201, 202, 203]  # recomputed along with the prompt
    assert resumed.num_computed_tokens == 0
    assert emitted == {"a": list(range(101, 107)), "b": list(range(201, 207))}
    assert finish == {"a": "length", "b": "length"}
    assert sched.make_stats().num_preemptions == 1
    assert sched.kv_cache_manager.usage == 0.0


def test_preemption_with_prefix_caching_reuses_own_blocks() -> None:
    sched = make_scheduler(num_blocks=7, block_size=4)
    sched.add_request(make_req("a", [1] * 8, max_tokens=8))
    sched.add_request(make_req("b", [5, 6, 7, 8, 9, 10, 11, 12], max_tokens=8))
    tokens: dict[str, list[int]] = {"a": [], "b": []}
    resumed_hits = []
    for _ in range(40):
        out, outs = run_step(sched, lambda r: 40 if r == "a" else 50)
        resumed_hits += [n.num_computed_tokens for n in out.scheduled_new_reqs if n.output_token_ids]
        for o in outs.outputs:
            tokens[o.req_id] += o.new_token_ids
        if not sched.has_unfinished_requests():
            break
    assert resumed_hits and resumed_hits[0] > 0  # the resumed request found its own freed blocks
    assert tokens == {"a": [40] * 8, "b": [50] * 8}
    assert sched.kv_cache_manager.usage == 0.0


def test_prompt_too_long_for_the_cache_is_capped_not_stuck() -> None:
    sched = make_scheduler(num_blocks=3, block_size=4, max_model_len=100)  # 8 token slots
    req = make_req("a", [1] * 6, max_tokens=50)
    sched.add_request(req)
    n_out = 0
    for _ in range(20):
        _, outs = run_step(sched)
        n_out += sum(len(o.new_token_ids) for o in outs.outputs)
        if not sched.has_unfinished_requests():
            break
    assert req.status == RequestStatus.FINISHED_LENGTH_CAPPED and n_out == 3  # 9 tokens need KV for 8


# ---------------------------------------------------------------------------------------------- prefix cache
def test_shared_prefix_hits_across_steps_and_within_a_step() -> None:
    sched = make_scheduler()
    prefix = list(range(1000, 1048))  # 3 blocks of 16
    sched.add_request(make_req("a", [*prefix, 1, 2], max_tokens=3))
    sched.add_request(make_req("b", [*prefix, 3, 4], max_tokens=3))  # same step as "a"
    out, _ = run_step(sched)
    assert out.num_scheduled_tokens == {"a": 50, "b": 2}
    new_b = out.scheduled_new_reqs[1]
    assert new_b.num_computed_tokens == 48 and new_b.block_ids[:3] == out.scheduled_new_reqs[0].block_ids[:3]
    assert sched.get_request("b").num_cached_tokens == 48
    sched.add_request(make_req("c", [*prefix, 5], max_tokens=3))  # a later step
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens["c"] == 1
    assert out.scheduled_new_reqs[0].num_computed_tokens == 48
    assert outs.scheduler_stats.prefix_cache_hits == 96
    assert outs.scheduler_stats.prefix_cache_queries == 50 + 50 + 49


def test_fully_cached_prompt_still_computes_a_token() -> None:
    sched = make_scheduler()
    prompt = list(range(500, 549))  # 49 tokens
    sched.add_request(make_req("a", prompt, max_tokens=1))
    run_step(sched)
    sched.add_request(make_req("b", prompt, max_tokens=1))
    out, outs = run_step(sched)
    assert out.num_scheduled_tokens == {"b": 1}
    assert outs.outputs[0].new_token_ids == [7] and outs.outputs[0].num_cached_tokens == 48


def test_prompt_logprobs_requests_skip_the_cache() -> None:
    sched = make_scheduler()
    prompt = list(range(500, 540))
    sched.add_request(make_req("a", prompt, max_tokens=1))
    run_step(sched)
    sched.add_request(make_req("b", prompt, max_tokens=1, prompt_logprobs=0))
    out, _ = run_step(sched)
    assert out.num_scheduled_tokens == {"b": 40}


# ---------------------------------------------------------------------------------------------- abort
def test_abort_frees_blocks_in_any_state_and_emits_nothing() -> None:
    sched = make_scheduler(max_num_seqs=1)
    sched.add_request(make_req("run", list(range(40)), max_tokens=10))
    sched.add_request(make_req("wait", list(range(40)), max_tokens=10))
    run_step(sched)
    assert sched.kv_cache_manager.usage > 0
    sched.abort_requests(["run", "wait", "unknown"])
    assert sched.kv_cache_manager.usage == 0.0
    assert not sched.has_unfinished_requests() and sched.get_num_unfinished_requests() == 0
    out = sched.schedule()
    assert out.is_empty and out.finished_req_ids == {"run", "wait"}
    assert sched.schedule().finished_req_ids == set()


def test_abort_between_schedule_and_update_is_skipped() -> None:
    sched = make_scheduler()
    sched.add_request(make_req("a", [1, 2, 3], max_tokens=5))
    sched.add_request(make_req("b", [4, 5, 6], max_tokens=5))
    out = sched.schedule()
    sched.abort_requests("a")
    runner = ModelRunnerOutput(req_ids=["a", "b"], sampled_token_ids=[[9], [9]])
    outs = sched.update_from_output(out, runner)
    assert outputs_by_id(outs) == {"b": [9]}
    assert sched.kv_cache_manager.get_block_ids("a") == []


def test_finish_requests_with_a_stop_status() -> None:
    sched = make_scheduler()
    req = make_req("a", [1, 2, 3], max_tokens=5)
    sched.add_request(req)
    run_step(sched)
    sched.finish_requests(["a"], RequestStatus.FINISHED_STOPPED)
    assert req.status == RequestStatus.FINISHED_STOPPED and sched.kv_cache_manager.usage == 0.0


# ---------------------------------------------------------------------------------------------- stop checks
def run_to_end(sched: Scheduler, req: Request, tokens: list[int]) -> tuple[list[int], str | None, object]:
    sched.add_request(req)
    it = iter(tokens)
    got: list[int] = []
    for _ in range(len(tokens) + 5):
        _, outs = run_step(sched, lambda _: next(it))
        for o in outs.outputs:
            got += o.new_token_ids
            if o.finished:
                assert not sched.has_unfinished_requests()
                return got, o.finish_reason, o.stop_reason
    raise AssertionError("request did not finish")


def test_eos_stops() -> None:
    got = run_to_end(make_scheduler(), make_req("a", [1], max_tokens=10), [5, 6, EOS, 8])
    assert got == ([5, 6, EOS], "stop", None)


def test_stop_token_ids_stop_with_stop_reason() -> None:
    req = make_req("a", [1], max_tokens=10, stop_token_ids=[6])
    assert run_to_end(make_scheduler(), req, [5, 6, 7]) == ([5, 6], "stop", 6)


def test_min_tokens_defers_eos_and_stop_tokens() -> None:
    req = make_req("a", [1], max_tokens=10, min_tokens=3, stop_token_ids=[6])
    assert run_to_end(make_scheduler(), req, [EOS, 6, EOS, 9]) == ([EOS, 6, EOS], "stop", None)


def test_max_tokens_caps_length() -> None:
    assert run_to_end(make_scheduler(), make_req("a", [1], max_tokens=3), [5] * 10) == (
        [5, 5, 5],
        "length",
        None,
    )


def test_ignore_eos() -> None:
    req = make_req("a", [1], max_tokens=3, ignore_eos=True)
    assert run_to_end(make_scheduler(), req, [EOS] * 5) == ([EOS] * 3, "length", None)


def test_eos_on_the_last_allowed_token_is_a_stop() -> None:
    assert run_to_end(make_scheduler(), make_req("a", [1], max_tokens=2), [5, EOS])[1:] == ("stop", None)


def test_max_model_len_caps_length() -> None:
    sched = make_scheduler(max_model_len=8)
    req = make_req("a", [1] * 5, max_model_len=8, max_tokens=None)
    got, reason, _ = run_to_end(sched, req, [5] * 10)
    assert got == [5, 5, 5] and reason == "length" and req.num_tokens == 8


def test_logprobs_are_passed_through() -> None:
    sched = make_scheduler()
    sched.add_request(make_req("a", [1, 2, 3], max_tokens=1, logprobs=1, prompt_logprobs=1))
    out = sched.schedule()
    lp = [TokenLogprobs([7, 3], [-0.1, -2.0], rank=1)]
    plp = [None, TokenLogprobs([2, 9], [-1.0, -0.5], rank=2), TokenLogprobs([3], [-0.2], rank=1)]
    runner = ModelRunnerOutput(["a"], [[7]], logprobs=[lp], prompt_logprobs={"a": plp})
    o = sched.update_from_output(out, runner).outputs[0]
    assert o.new_logprobs == lp and o.new_prompt_logprobs == plp and o.finish_reason == "length"


# ---------------------------------------------------------------------------------------------- errors
def test_errors_for_prompts_that_cannot_run() -> None:
    sched = make_scheduler(num_blocks=5, block_size=4, max_model_len=32)
    with pytest.raises(ValueError, match="empty"):
        sched.add_request(make_req("a", []))
    with pytest.raises(ValueError, match="max_model_len"):
        sched.add_request(make_req("b", [1] * 32, max_model_len=32))
    with pytest.raises(ValueError, match="KV cache"):
        sched.add_request(make_req("c", [1] * 17))
    sched.add_request(make_req("d", [1] * 16))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_req("d", [1]))
    assert sched.get_num_unfinished_requests() == 1


# ---------------------------------------------------------------------------------------------- multi-step decode
def test_lookahead_is_not_cut_short_by_a_request_near_max_tokens() -> None:
    sched = make_scheduler(block_size=4)
    sched.add_request(make_req("short", [10, 11, 12], max_tokens=3, ignore_eos=True))
    sched.add_request(make_req("long", [20, 21, 22], max_tokens=50, ignore_eos=True))
    run_step(sched)  # prefills: one token each
    out = sched.schedule()
    assert out.num_scheduled_tokens == {"short": 1, "long": 1}
    steps = sched.add_decode_lookahead(out, 8)
    assert steps == 8  # not 2, though "short" has only 2 tokens left
    runner = ModelRunnerOutput(req_ids=["short", "long"], sampled_token_ids=[[5] * 8, [6] * 8])
    outs = outputs_by_id(sched.update_from_output(out, runner))
    assert outs == {"short": [5, 5], "long": [6] * 8}  # max_tokens stays exact: the rest is dropped
    assert sched.get_request("short") is None or sched.get_request("short").is_finished()
    assert sched.get_request("long").num_output_tokens == 9
    assert sched.get_request("long").num_computed_tokens == sched.get_request("long").num_tokens - 1


def test_continuation_round_skips_length_stops_and_reserves_slots() -> None:
    sched = make_scheduler(block_size=4)
    sched.add_request(make_req("short", [10, 11, 12], max_tokens=5, ignore_eos=True))
    sched.add_request(make_req("long", [20, 21, 22], max_tokens=50, ignore_eos=True))
    sched.add_request(make_req("eos", [30, 31, 32], max_tokens=50))
    run_step(sched)  # prefills: one token each
    first = sched.schedule()
    assert sched.add_decode_lookahead(first, 4) == 4
    free_before = sched.kv_cache_manager.num_free_blocks
    # Scheduled before round 1's tokens are known: "short" (4 tokens left) ends inside round 1 → not continued.
    cont = sched.schedule_continuation(first, 4, 4)
    assert cont is not None
    second, steps = cont
    assert steps == 4 and list(second.num_scheduled_tokens) == ["long", "eos"]
    assert not second.scheduled_new_reqs and second.total_num_scheduled_tokens == 2
    # Each computes positions 3+4 .. 3+4+3 (tokens 4..7 of its outputs known after round 1): 11 slots = 3 blocks.
    assert [c.num_computed_tokens for c in second.scheduled_cached_reqs] == [7, 7]
    assert all(len(sched.kv_cache_manager.get_block_ids(r)) == 3 for r in ("long", "eos"))
    assert sched.kv_cache_manager.num_free_blocks < free_before
    # Round 1's update: "eos" stops on its second token; round 2's update ignores it.
    r1 = ModelRunnerOutput(
        req_ids=["short", "long", "eos"], sampled_token_ids=[[5] * 4, [6] * 4, [8, EOS, 8, 8]]
    )
    outs1 = outputs_by_id(sched.update_from_output(first, r1))
    assert outs1 == {"short": [5, 5, 5, 5], "long": [6] * 4, "eos": [8, EOS]}
    assert sched.get_request("eos") is None and "eos" in sched.finished_req_ids
    r2 = ModelRunnerOutput(req_ids=["long", "eos"], sampled_token_ids=[[7] * 4, [9] * 4])
    outs2 = outputs_by_id(sched.update_from_output(second, r2))
    assert outs2 == {"long": [7] * 4}
    long = sched.get_request("long")
    assert long.output_token_ids == [7, 6, 6, 6, 6, 7, 7, 7, 7]
    assert long.num_computed_tokens == long.num_tokens - 1
    # The next normal schedule goes on from there and tells the runner about the finished requests.
    nxt = sched.schedule()
    assert nxt.num_scheduled_tokens == {"long": 1} and {"short", "eos"} <= nxt.finished_req_ids


def test_no_continuation_when_requests_wait_or_blocks_are_short() -> None:
    sched = make_scheduler(block_size=4)
    sched.add_request(make_req("a", [1, 2, 3], max_tokens=40, ignore_eos=True))
    run_step(sched)
    first = sched.schedule()
    assert sched.add_decode_lookahead(first, 4) == 4
    sched.add_request(make_req("b", [4, 5, 6], max_tokens=4))
    assert sched.schedule_continuation(first, 4, 4) is None  # "b" waits: schedule normally after the update
    sched.abort_requests("b")
    assert sched.schedule_continuation(first, 4, 1) is None  # one step is not a round
    assert sched.schedule_continuation(first, 4, 4) is not None
    # Two usable blocks of 4 slots: "a" holds both after round 1's lookahead; round 2 would need a third.
    tight = make_scheduler(block_size=4, num_blocks=3)
    tight.add_request(make_req("a", [1, 2, 3], max_tokens=40, ignore_eos=True))
    run_step(tight)
    first = tight.schedule()
    assert tight.add_decode_lookahead(first, 4) == 4
    assert tight.schedule_continuation(first, 4, 4) is None
    assert tight.kv_cache_manager.num_free_blocks == 0
