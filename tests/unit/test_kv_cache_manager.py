"""KVCacheManager: block accounting, prefix caching and eviction order."""

from __future__ import annotations

import subprocess
import sys

from inferd.engine.kv_cache_manager import KVCacheManager
from inferd.engine.request import Request
from inferd.sampling_params import SamplingParams

BS = 16


def make_req(req_id: str, tokens: list[int], **params: object) -> Request:
    return Request(req_id, tokens, SamplingParams(**params), eos_token_id=None, max_model_len=10_000)


def compute(kv: KVCacheManager, req: Request, num_new: int | None = None) -> list[int] | None:
    """Schedule a request as the scheduler would: prefix lookup on first allocation, then advance."""
    hits: list[int] = []
    num_hit = 0
    if not kv.get_block_ids(req.req_id) and req.num_computed_tokens == 0:
        hits, num_hit = kv.get_computed_blocks(req)
    if num_new is None:
        num_new = req.num_tokens - req.num_computed_tokens - num_hit
    blocks = kv.allocate_slots(req, num_new, hits, num_hit)
    if blocks is not None:
        req.num_computed_tokens += num_hit + num_new
    return blocks


def test_null_block_is_never_handed_out_and_failed_allocation_changes_nothing() -> None:
    kv = KVCacheManager(num_blocks=5, block_size=BS, enable_prefix_caching=True)
    assert kv.num_usable_blocks == 4 and kv.num_free_blocks == 4 and kv.usage == 0.0
    a = make_req("a", list(range(3 * BS)))
    assert compute(kv, a) == [1, 2, 3]
    b = make_req("b", list(range(1000, 1000 + 2 * BS)))
    before = (kv.num_free_blocks, kv.free_block_ids(), kv.usage)
    assert compute(kv, b) is None  # needs 2, only 1 free
    assert (kv.num_free_blocks, kv.free_block_ids(), kv.usage) == before
    assert kv.get_block_ids("b") == []
    c = make_req("c", list(range(2000, 2000 + BS)))
    assert compute(kv, c) == [4]
    assert kv.usage == 1.0 and kv.num_free_blocks == 0
    assert 0 not in kv.get_block_ids("a") + kv.get_block_ids("c")
    kv.free(a)
    kv.free(c)
    assert kv.usage == 0.0 and kv.num_free_blocks == 4


def test_blocks_grow_one_at_a_time_during_decode() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    req = make_req("a", [1, 2, 3, 4, 5])
    assert compute(kv, req) == [1, 2]
    for step in range(3):  # tokens 6, 7, 8 fit in block 2
        req.append_output_token_ids([10 + step])
        assert compute(kv, req) == []
    req.append_output_token_ids([20])  # 9th token needs block 3
    assert compute(kv, req) == [3]
    assert kv.get_block_ids("a") == [1, 2, 3]


def test_shared_prefix_hits_and_reference_counts() -> None:
    kv = KVCacheManager(num_blocks=20, block_size=BS, enable_prefix_caching=True)
    prefix = list(range(3 * BS))
    a = make_req("a", [*prefix, 900, 901])
    assert compute(kv, a) is not None
    # A sibling scheduled while "a" still runs hits its 3 full blocks.
    b = make_req("b", [*prefix, 700])
    hits, num_hit = kv.get_computed_blocks(b)
    assert hits == kv.get_block_ids("a")[:3] and num_hit == 48
    assert kv.allocate_slots(b, b.num_tokens - num_hit, hits, num_hit) == [*hits, 5]
    assert [kv.block_ref_cnt(x) for x in hits] == [2, 2, 2]
    assert kv.prefix_cache_queries == a.num_tokens + b.num_tokens
    assert kv.prefix_cache_hits == 48


def test_hit_on_a_freed_block_takes_it_off_the_free_queue() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=BS, enable_prefix_caching=True)
    a = make_req("a", list(range(2 * BS + 1)))
    compute(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 5
    b = make_req("b", list(range(2 * BS + 5)))
    hits, num_hit = kv.get_computed_blocks(b)
    assert hits == [1, 2] and num_hit == 32
    assert kv.num_free_blocks == 5  # lookup alone changes nothing
    kv.allocate_slots(b, b.num_tokens - num_hit, hits, num_hit)
    assert kv.num_free_blocks == 2
    assert 1 not in kv.free_block_ids() and 2 not in kv.free_block_ids()
    assert [kv.block_ref_cnt(x) for x in (1, 2)] == [1, 1]


def test_at_least_one_token_is_always_computed() -> None:
    kv = KVCacheManager(num_blocks=20, block_size=BS, enable_prefix_caching=True)
    tokens = list(range(3 * BS + 1))
    a = make_req("a", tokens)
    compute(kv, a)
    kv.free(a)
    # Same 49 tokens: 48 cached, the last one is computed.
    assert kv.get_computed_blocks(make_req("b", tokens))[1] == 48
    # Exactly 3 full blocks: the last block is recomputed (block granularity).
    assert kv.get_computed_blocks(make_req("c", tokens[: 3 * BS]))[1] == 32
    assert kv.get_computed_blocks(make_req("d", tokens[:1]))[1] == 0


def test_no_hits_with_prompt_logprobs_or_caching_off() -> None:
    kv = KVCacheManager(num_blocks=20, block_size=BS, enable_prefix_caching=True)
    tokens = list(range(3 * BS + 1))
    a = make_req("a", tokens)
    compute(kv, a)
    assert kv.get_computed_blocks(make_req("b", tokens, prompt_logprobs=1)) == ([], 0)
    off = KVCacheManager(num_blocks=20, block_size=BS, enable_prefix_caching=False)
    c = make_req("c", tokens)
    compute(off, c)
    off.free(c)
    assert off.get_computed_blocks(make_req("d", tokens)) == ([], 0)
    assert off.prefix_cache_queries == 0


def test_prefix_must_match_from_the_first_block() -> None:
    kv = KVCacheManager(num_blocks=20, block_size=4, enable_prefix_caching=True)
    compute(kv, make_req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    # Same second block but a different first block: the chain hash differs, no hit.
    assert kv.get_computed_blocks(make_req("b", [0, 2, 3, 4, 5, 6, 7, 8, 9])) == ([], 0)
    hits, n = kv.get_computed_blocks(make_req("c", [1, 2, 3, 4, 5, 6, 7, 0, 9]))
    assert n == 4 and hits == kv.get_block_ids("a")[:1]


def test_eviction_is_least_recently_freed_first_tail_blocks_before_head() -> None:
    kv = KVCacheManager(num_blocks=5, block_size=BS, enable_prefix_caching=True)
    a_tokens = list(range(2 * BS))
    b_tokens = list(range(500, 500 + 2 * BS))
    a, b = make_req("a", a_tokens), make_req("b", b_tokens)
    assert compute(kv, a) == [1, 2]
    assert compute(kv, b) == [3, 4]
    kv.free(a)
    kv.free(b)
    assert kv.free_block_ids() == [2, 1, 4, 3]
    # A fresh request evicts a's tail block first.
    c = make_req("c", list(range(900, 910)))
    assert compute(kv, c) == [2]
    assert not kv.is_cached(2) and kv.is_cached(1)
    assert kv.get_computed_blocks(make_req("a2", [*a_tokens, 1]))[1] == BS
    assert kv.get_computed_blocks(make_req("b2", [*b_tokens, 1]))[1] == 2 * BS
    # Then a's head block, then b's blocks, tail first.
    d = make_req("d", list(range(1200, 1200 + 2 * BS)))
    assert compute(kv, d) == [1, 4]
    assert kv.get_computed_blocks(make_req("b3", [*b_tokens, 1]))[1] == BS


def test_freed_blocks_without_a_hash_are_reused_before_cached_ones() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=BS, enable_prefix_caching=True)
    a = make_req("a", list(range(BS + 3)))  # one full (cached) block, one partial block
    assert compute(kv, a) == [1, 2]
    kv.free(a)
    assert kv.free_block_ids()[0] == 2 and kv.is_cached(1)
    b = make_req("b", list(range(700, 710)))
    assert compute(kv, b) == [2]
    assert kv.is_cached(1)


def test_duplicate_content_keeps_one_cached_copy() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    tokens = [1, 2, 3, 4, 5]
    a, b = make_req("a", tokens), make_req("b", tokens)
    assert kv.allocate_slots(a, 5) == [1, 2]
    assert kv.allocate_slots(b, 5) == [3, 4]  # no lookup: computes its own copy
    assert kv.is_cached(1) and not kv.is_cached(3)
    kv.free(a)
    kv.free(b)
    hits, n = kv.get_computed_blocks(make_req("c", tokens))
    assert hits == [1] and n == 4
    assert kv.num_free_blocks == kv.num_usable_blocks


def test_reset_prefix_cache_only_when_idle() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    tokens = list(range(9))
    a = make_req("a", tokens)
    compute(kv, a)
    assert kv.reset_prefix_cache() is False
    kv.free(a)
    assert kv.get_computed_blocks(make_req("b", tokens))[1] == 8
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks(make_req("c", tokens)) == ([], 0)
    assert kv.num_free_blocks == 9


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys; import inferd.engine.scheduler, inferd.engine.kv_cache_manager; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
