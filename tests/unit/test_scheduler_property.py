"""Property test: random adds / steps / aborts against a fake runner that checks every KV slot it reads."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.config import CacheConfig, SchedulerConfig
from inferd.engine.request import Request, RequestStatus
from inferd.engine.scheduler import Scheduler
from inferd.engine.scheduler_output import SchedulerOutput
from inferd.sampling_params import SamplingParams
from inferd.worker.model_runner_output import ModelRunnerOutput

EOS = 0
STOP = 9
BASES = (
    [1] * 24,
    [1, 2, 3] * 8,
    [3, 2] * 12,
)  # prompts start with a piece of one of these: prefix-cache hits


@dataclass
class RunnerReq:
    tokens: list[int]
    block_table: list[int]
    num_computed: int


@dataclass
class FakeRunner:
    """Holds what a model runner would hold and checks the scheduler's instructions against it.

    A KV slot's content is the token prefix that produced it (a token's KV depends on every earlier token), so any
    wrong prefix-cache hit, shared-block overwrite or stale block shows up as a mismatch when it is read.
    """

    block_size: int
    rng: random.Random
    reqs: dict[str, RunnerReq] = field(default_factory=dict)
    kv: dict[int, tuple[int, ...]] = field(default_factory=dict)
    sampled_log: dict[str, list[int]] = field(default_factory=dict)  # every token sampled per request

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        assert not (out.finished_req_ids & set(out.num_scheduled_tokens))
        for req_id in out.finished_req_ids | out.preempted_req_ids:
            self.reqs.pop(req_id, None)
        for new in out.scheduled_new_reqs:
            assert new.req_id not in self.reqs
            # A resumed request comes back with exactly the tokens sampled for it so far.
            assert new.output_token_ids == self.sampled_log.setdefault(new.req_id, [])
            self.reqs[new.req_id] = RunnerReq(
                [*new.prompt_token_ids, *new.output_token_ids], list(new.block_ids), new.num_computed_tokens
            )
        for cached in out.scheduled_cached_reqs:
            state = self.reqs[cached.req_id]
            assert state.num_computed == cached.num_computed_tokens
            state.block_table += cached.new_block_ids
        assert len(out.num_scheduled_tokens) == len(out.scheduled_new_reqs) + len(out.scheduled_cached_reqs)
        assert out.total_num_scheduled_tokens == sum(out.num_scheduled_tokens.values())
        bs = self.block_size
        for req_id, n in out.num_scheduled_tokens.items():  # every layer writes the step's KV first ...
            state = self.reqs[req_id]
            end = state.num_computed + n
            assert n > 0 and end <= len(state.tokens)
            assert len(state.block_table) * bs >= end and 0 not in state.block_table
            assert len(set(state.block_table)) == len(state.block_table)
            for p in range(state.num_computed, end):
                self.kv[state.block_table[p // bs] * bs + p % bs] = tuple(state.tokens[: p + 1])
        sampled: list[list[int]] = []
        for req_id, n in out.num_scheduled_tokens.items():  # ... then attends over the whole context
            state = self.reqs[req_id]
            end = state.num_computed + n
            for p in range(end):
                got = self.kv.get(state.block_table[p // bs] * bs + p % bs)
                assert got == tuple(state.tokens[: p + 1]), f"{req_id}: wrong KV at position {p}"
            state.num_computed = end
            if end == len(state.tokens):
                token = self.rng.randrange(20)
                state.tokens.append(token)
                self.sampled_log[req_id].append(token)
                sampled.append([token])
            else:
                sampled.append([])
        return ModelRunnerOutput(req_ids=list(out.num_scheduled_tokens), sampled_token_ids=sampled)


def check_invariants(sched: Scheduler) -> None:
    kv = sched.kv_cache_manager
    running_ids = [r.req_id for r in sched.running]
    waiting_ids = [r.req_id for r in sched.waiting]
    assert not set(running_ids) & set(waiting_ids)
    assert set(running_ids) | set(waiting_ids) == set(sched.requests)
    assert len(running_ids) <= sched.max_num_seqs
    assert all(r.status == RequestStatus.RUNNING for r in sched.running)
    assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED) for r in sched.waiting)
    holders: Counter[int] = Counter()
    for req in sched.running:
        table = kv.get_block_ids(req.req_id)
        assert len(set(table)) == len(table)
        assert len(table) * kv.block_size >= req.num_computed_tokens
        holders.update(table)
    for req in sched.waiting:
        assert kv.get_block_ids(req.req_id) == [] and req.num_computed_tokens == 0
    assert 0 not in holders and kv.block_ref_cnt(0) == 0
    free = kv.free_block_ids()
    assert len(set(free)) == len(free) and 0 not in free
    for block_id in range(1, kv.num_blocks):
        assert kv.block_ref_cnt(block_id) == holders[block_id]
        assert (block_id in free) == (holders[block_id] == 0)
    assert kv.num_free_blocks + kv.num_used_blocks == kv.num_usable_blocks
    assert kv.num_used_blocks == len(holders)


configs = st.fixed_dictionaries(
    {
        "block_size": st.sampled_from([1, 2, 4]),
        "num_blocks": st.integers(3, 10),
        "max_num_seqs": st.integers(1, 6),
        "max_num_batched_tokens": st.one_of(st.integers(1, 8), st.integers(16, 64)),
        "enable_chunked_prefill": st.booleans(),
        "enable_prefix_caching": st.booleans(),
        "max_model_len": st.integers(6, 32),
    }
)


def random_ops(rng: random.Random, num_ops: int) -> list[tuple]:
    """A workload: adds with shared prefixes, steps, aborts (also between schedule and update), finishes."""
    ops: list[tuple] = []
    for _ in range(num_ops):
        r = rng.random()
        if r < 0.45:
            base = BASES[rng.randrange(len(BASES))][: rng.randrange(13)]
            suffix = [rng.randint(1, 3) for _ in range(rng.randrange(4))]
            max_tokens = rng.randint(1, 16)
            ops.append(
                (
                    "add",
                    base + suffix,
                    max_tokens,
                    rng.randint(0, min(3, max_tokens)),  # min_tokens
                    rng.random() < 0.2,  # ignore_eos
                    0 if rng.random() < 0.1 else None,  # prompt_logprobs
                )
            )
        elif r < 0.9:
            ops.append(("step",))
        else:
            ops.append((rng.choice(["abort", "step_abort", "finish"]), rng.randrange(100)))
    return ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, seed=st.integers(0, 2**32 - 1), num_ops=st.integers(10, 80))
def test_random_workload_keeps_invariants(config: dict, seed: int, num_ops: int) -> None:
    rng = random.Random(seed)
    ops = random_ops(rng, num_ops)
    bs = config["block_size"]
    sched = Scheduler(
        SchedulerConfig(
            max_num_seqs=config["max_num_seqs"],
            max_num_batched_tokens=config["max_num_batched_tokens"],
            max_model_len=config["max_model_len"],
            enable_chunked_prefill=config["enable_chunked_prefill"],
        ),
        CacheConfig(block_size=bs, enable_prefix_caching=config["enable_prefix_caching"]),
        num_blocks=config["num_blocks"],
    )
    runner = FakeRunner(bs, rng)
    capacity = (config["num_blocks"] - 1) * bs
    added: dict[str, Request] = {}
    emitted: dict[str, list[int]] = {}
    ends: Counter[str] = Counter()

    def unfinished_id(i: int) -> str | None:
        live = [r for r in added if added[r].req_id in sched.requests]
        return live[i % len(live)] if live else None

    def abort(i: int) -> None:
        req_id = unfinished_id(i)
        if req_id is not None:
            ends[req_id] += 1
            sched.abort_requests([req_id])
            assert added[req_id].status == RequestStatus.FINISHED_ABORTED

    def step(abort_index: int | None = None) -> None:
        had_work = sched.has_unfinished_requests()
        out = sched.schedule()
        assert out.is_empty != had_work, "unfinished requests but nothing scheduled"
        runner_output = runner.execute(out)
        if abort_index is not None:
            abort(abort_index)
        outs = sched.update_from_output(out, runner_output)
        for o in outs.outputs:
            assert ends[o.req_id] == 0, "output after the request ended"
            emitted[o.req_id] += o.new_token_ids
            if o.finished:
                ends[o.req_id] += 1

    for op in ops:
        kind = op[0]
        if kind == "add":
            _, prompt, max_tokens, min_tokens, ignore_eos, prompt_logprobs = op
            max_prompt = min(capacity, config["max_model_len"] - 1)
            if not config["enable_chunked_prefill"]:
                max_prompt = min(max_prompt, config["max_num_batched_tokens"])
            prompt = prompt[:max_prompt]
            if not prompt:
                continue
            req_id = f"r{len(added)}"
            params = SamplingParams(
                max_tokens=max_tokens,
                min_tokens=min_tokens,
                ignore_eos=ignore_eos,
                stop_token_ids=[STOP],
                prompt_logprobs=prompt_logprobs,
            )
            req = Request(req_id, prompt, params, eos_token_id=EOS, max_model_len=config["max_model_len"])
            sched.add_request(req)
            added[req_id] = req
            emitted[req_id] = []
        elif kind == "step":
            step()
        elif kind == "step_abort":
            step(op[1])
        elif kind == "abort":
            abort(op[1])
        elif kind == "finish":
            req_id = unfinished_id(op[1])
            if req_id is not None:
                ends[req_id] += 1
                sched.finish_requests([req_id], RequestStatus.FINISHED_STOPPED)
        check_invariants(sched)

    for _ in range(1000):
        if not sched.has_unfinished_requests():
            break
        step()
        check_invariants(sched)
    assert not sched.has_unfinished_requests(), "requests never finished"
    assert not sched.waiting and not sched.running and not sched.requests
    assert sched.kv_cache_manager.usage == 0.0
    assert sched.kv_cache_manager.num_free_blocks == sched.kv_cache_manager.num_usable_blocks
    for req_id, req in added.items():
        assert ends[req_id] == 1, f"{req_id} ended {ends[req_id]} times"
        assert req.is_finished()
        # Outputs are reported once each, also across preemptions.
        assert emitted[req_id] == req.output_token_ids
        log = runner.sampled_log.get(req_id, [])
        assert req.output_token_ids == log[: len(req.output_token_ids)]
        assert (
            len(log) - len(req.output_token_ids) <= 1
        )  # only a token sampled just before an abort is dropped
        assert req.num_output_tokens <= req.max_tokens
        assert req.num_tokens <= config["max_model_len"]
        if req.status == RequestStatus.FINISHED_LENGTH_CAPPED:
            assert req.num_output_tokens == req.max_tokens or req.num_tokens == config["max_model_len"]
