"""Paged KV-cache block manager with automatic prefix caching (pure Python, no torch).

The KV cache is ``num_blocks`` fixed-size blocks of ``block_size`` token slots. Block 0 is the null block: it is
never handed out (padded CUDA-graph slots write there), so blocks ``1..num_blocks-1`` are usable.

Prefix caching: once all tokens of a full block are known, the block gets a hash that chains its parent block's
hash and its token ids, and the hash → block map makes it findable by any request whose tokens start the same
way. Freed blocks keep their hash until they are handed out again (evicted). The free queue hands out blocks from
its head; freed blocks that hold a cached prefix go to its tail (a request's blocks in reverse order, so its tail
blocks are evicted before its head blocks), freed blocks without a hash go to its head (nothing to lose there).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from inferd.engine.request import Request

NULL_BLOCK_ID = 0
_ROOT_HASH = 0x9E3779B97F4A7C15  # parent hash of a request's first block


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Chained hash of one full block: deterministic for int token ids, equal iff the whole prefix is (w.h.p.)."""
    return hash((_ROOT_HASH if parent_hash is None else parent_hash, tuple(token_ids)))


class KVCacheManager:
    """Hands out KV-cache blocks to requests and shares cached prefix blocks between them.

    Guarantees: a block is on the free queue iff its reference count is 0; the reference count of a block equals
    the number of requests whose block table holds it; ``num_free_blocks + num_used_blocks == num_usable_blocks``;
    the null block is never handed out.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be at least 2 (block 0 is reserved); got {num_blocks}.")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1; got {block_size}.")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_cnt: list[int] = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        # block_id -> None, in eviction order (head first); the null block is never in it.
        self._free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self._cached_blocks: dict[int, int] = {}  # block hash -> block id
        self._req_to_blocks: dict[str, list[int]] = {}
        self._num_cached_blocks: dict[str, int] = {}  # req_id -> leading blocks of its table already hashed
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    # ------------------------------------------------------------------ sizes
    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        """Blocks with reference count 0 (cached or not); all of them can be handed out."""
        return len(self._free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_usable_blocks - len(self._free_queue)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by at least one request, 0..1."""
        return self.num_used_blocks / self.num_usable_blocks

    # ------------------------------------------------------------------ prefix cache
    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The longest run of cached full blocks that starts the request's tokens, and the tokens they cover.

        At most ``request.num_tokens - 1`` tokens count as a hit, so at least one token is computed (its logits are
        needed). Returns ``([], 0)`` when prefix caching is off or the request asks for prompt logprobs. Changes
        no block; counts the lookup in ``prefix_cache_queries`` / ``prefix_cache_hits``.
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit_blocks: list[int] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block_id = self._cached_blocks.get(block_hash)
            if block_id is None:
                break
            hit_blocks.append(block_id)
        num_hit_tokens = len(hit_blocks) * self.block_size
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += num_hit_tokens
        return hit_blocks, num_hit_tokens

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash. Only possible while no block is in use; returns whether it happened."""
        if self.num_used_blocks > 0:
            return False
        self._cached_blocks.clear()
        self._block_hash = [None] * self.num_blocks
        return True

    # ------------------------------------------------------------------ allocation
    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: Sequence[int] = (),
        num_new_computed_tokens: int = 0,
        num_lookahead_tokens: int = 0,
    ) -> list[int] | None:
        """Make room for ``num_computed_tokens + num_new_computed_tokens + num_new_tokens`` tokens, plus
        ``num_lookahead_tokens`` slots for tokens not sampled yet (multi-step decoding).

        ``new_computed_blocks`` (prefix-cache hits from :meth:`get_computed_blocks`, covering
        ``num_new_computed_tokens`` tokens) are appended first, then fresh blocks. Returns the appended block ids,
        or ``None`` with nothing changed when there are not enough free blocks. Afterwards every full block whose
        tokens are all known is cached, so a request scheduled later in the same step already hits it.
        """
        req_id = request.req_id
        req_blocks = self._req_to_blocks.get(req_id)
        num_held = 0 if req_blocks is None else len(req_blocks)
        assert not new_computed_blocks or num_held == 0, (
            "prefix hits are only taken before a request holds blocks"
        )
        assert num_new_computed_tokens == len(new_computed_blocks) * self.block_size
        num_total = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        assert num_total <= request.num_tokens, "cannot compute tokens that are not known yet"
        num_required = -(-(num_total + num_lookahead_tokens) // self.block_size)
        num_fresh = max(0, num_required - num_held - len(new_computed_blocks))
        num_hits_from_free = (
            sum(1 for b in new_computed_blocks if self._ref_cnt[b] == 0) if new_computed_blocks else 0
        )
        if num_fresh + num_hits_from_free > len(self._free_queue):
            return None

        if req_blocks is None:
            req_blocks = self._req_to_blocks[req_id] = []
            self._num_cached_blocks[req_id] = 0
        if new_computed_blocks:
            for block_id in new_computed_blocks:
                if self._ref_cnt[block_id] == 0:
                    del self._free_queue[block_id]
                self._ref_cnt[block_id] += 1
            req_blocks.extend(new_computed_blocks)
            self._num_cached_blocks[req_id] += len(new_computed_blocks)

        fresh = [self._pop_free_block() for _ in range(num_fresh)] if num_fresh else []
        req_blocks.extend(fresh)

        if self.enable_prefix_caching and num_total // self.block_size > self._num_cached_blocks[req_id]:
            self._cache_full_blocks(request, req_blocks, num_total // self.block_size)
        return [*new_computed_blocks, *fresh] if new_computed_blocks else fresh

    def reserve_slots(self, request: Request, num_slots: int) -> list[int] | None:
        """Make the request hold blocks for its first ``num_slots`` token positions, tokens that are not known yet
        included (a decode round scheduled while the previous round's tokens are still on the device). Returns the
        appended block ids, or ``None`` with nothing changed when there are not enough free blocks. Caches nothing:
        the next :meth:`allocate_slots` call caches the blocks whose tokens are known by then (the scheduler's
        allocate_slots for the round's first token has cached every full block known before the round)."""
        req_blocks = self._req_to_blocks.get(request.req_id)
        assert req_blocks is not None, "reserve_slots extends a running request's table"
        num_fresh = max(0, -(-num_slots // self.block_size) - len(req_blocks))
        if num_fresh > len(self._free_queue):
            return None
        fresh = [self._pop_free_block() for _ in range(num_fresh)]
        req_blocks.extend(fresh)
        return fresh

    def free(self, request: Request) -> None:
        """Release the request's blocks (finish, abort or preemption). Cached ones stay findable until evicted."""
        req_blocks = self._req_to_blocks.pop(request.req_id, None)
        self._num_cached_blocks.pop(request.req_id, None)
        if not req_blocks:
            return
        for block_id in reversed(req_blocks):
            self._ref_cnt[block_id] -= 1
            assert self._ref_cnt[block_id] >= 0
            if self._ref_cnt[block_id] == 0:
                self._free_queue[block_id] = None
                if self._block_hash[block_id] is None:
                    self._free_queue.move_to_end(block_id, last=False)

    def num_blocks_held(self, req_id: str) -> int:
        return len(self._req_to_blocks.get(req_id, ()))

    def get_block_ids(self, req_id: str) -> list[int]:
        """The request's block table (a copy); empty when it holds no blocks."""
        return list(self._req_to_blocks.get(req_id, ()))

    # ------------------------------------------------------------------ introspection (tests, debugging)
    def block_ref_cnt(self, block_id: int) -> int:
        return self._ref_cnt[block_id]

    def free_block_ids(self) -> list[int]:
        """Free blocks in the order they will be handed out."""
        return list(self._free_queue)

    def is_cached(self, block_id: int) -> bool:
        block_hash = self._block_hash[block_id]
        return block_hash is not None and self._cached_blocks.get(block_hash) == block_id

    # ------------------------------------------------------------------ internals
    def _pop_free_block(self) -> int:
        block_id, _ = self._free_queue.popitem(last=False)
        block_hash = self._block_hash[block_id]
        if block_hash is not None:
            if self._cached_blocks.get(block_hash) == block_id:
                del self._cached_blocks[block_hash]
            self._block_hash[block_id] = None
        assert self._ref_cnt[block_id] == 0
        self._ref_cnt[block_id] = 1
        return block_id

    def _update_block_hashes(self, request: Request) -> None:
        """Extend ``request.block_hashes`` to every full block of ``request.all_token_ids``."""
        hashes = request.block_hashes
        tokens = request.all_token_ids
        bs = self.block_size
        parent = hashes[-1] if hashes else None
        for i in range(len(hashes), len(tokens) // bs):
            parent = hash_block_tokens(parent, tokens[i * bs : (i + 1) * bs])
            hashes.append(parent)

    def _cache_full_blocks(self, request: Request, req_blocks: list[int], num_full_blocks: int) -> None:
        start = self._num_cached_blocks[request.req_id]
        if num_full_blocks <= start:
            return
        self._update_block_hashes(request)
        for i in range(start, num_full_blocks):
            block_id = req_blocks[i]
            if self._block_hash[block_id] is not None:
                continue  # a prefix hit: cached already
            block_hash = request.block_hashes[i]
            if block_hash not in self._cached_blocks:
                self._block_hash[block_id] = block_hash
                self._cached_blocks[block_hash] = block_id
            # else: another block already caches these tokens; this copy stays private and is not findable.
        self._num_cached_blocks[request.req_id] = num_full_blocks
