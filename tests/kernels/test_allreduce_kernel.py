"""The fused all-reduce + residual add + RMSNorm kernel (``kernels/triton_allreduce.py``) against the reference.

Without GPUs the ranks run one after another through ``TRITON_INTERPRET=1``, each with its own inboxes, flags and
epochs (plain tensors standing in for symmetric memory, all addressable in one process). A rank that runs before a
peer finds the peer's row already pushed: the test writes it into the inbox of the call's epoch and sets the flag, as
the peer's kernel would; every later rank finds the earlier ranks' real pushes. Over several calls (both inboxes,
flags one epoch ahead of their reader) the result must equal the reference on every rank, bit for bit across ranks.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from inferd.kernels import reference, triton_allreduce

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="the multi-rank simulation needs TRITON_INTERPRET=1"
)

FLAGS = triton_allreduce.FLAG_ROWS
INBOX = 4 * 64  # elements per inbox


def _expected(partials: list[torch.Tensor], residual: torch.Tensor, weight: torch.Tensor, eps: float):
    total = torch.zeros_like(partials[0], dtype=torch.float32)
    for p in partials:  # rank order, float32, rounded once: what the all-reduce returns
        total += p.float()
    return reference.fused_add_rms_norm(total.to(partials[0].dtype), residual, weight, eps)


class _Ranks:
    def __init__(self, world: int, dtype: torch.dtype) -> None:
        self.world = world
        self.inboxes = [torch.full((2 * world * INBOX,), float("nan"), dtype=dtype) for _ in range(world)]
        self.flags = [torch.zeros(world * FLAGS, dtype=torch.int32) for _ in range(world)]
        self.epochs = [torch.zeros(FLAGS, dtype=torch.int32) for _ in range(world)]
        self.inbox_ptrs = torch.tensor([t.data_ptr() for t in self.inboxes], dtype=torch.int64)
        self.flag_ptrs = torch.tensor([t.data_ptr() for t in self.flags], dtype=torch.int64)

    def prepush(self, dst: int, src: int, x: torch.Tensor, epoch: int) -> None:
        """What ``src``'s kernel of this epoch writes into ``dst`` (for a ``src`` that runs after ``dst``)."""
        M, H = x.shape
        start = ((epoch & 1) * self.world + src) * INBOX
        self.inboxes[dst][start : start + M * H] = x.flatten()
        self.flags[dst][src * FLAGS : src * FLAGS + M] = epoch

    def run(self, rank: int, x, residual, weight, eps):
        return triton_allreduce.allreduce_add_rms_norm(
            x,
            residual,
            weight,
            eps,
            self.inbox_ptrs,
            self.flag_ptrs,
            self.epochs[rank],
            INBOX,
            rank,
            self.world,
        )


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("M,H", [(1, 64), (3, 40)])
def test_matches_reference_on_every_rank_over_several_calls(world: int, M: int, H: int) -> None:
    torch.manual_seed(0)
    eps = 1e-6
    ranks = _Ranks(world, torch.float32)
    weight = torch.randn(H)
    for call in range(1, 4):  # epochs 1, 2, 3: both inboxes, and the second one again
        partials = [torch.randn(M, H) for _ in range(world)]
        residual = torch.randn(M, H)
        for r in range(world):  # ranks run in order 0, 1, ...: later ranks' rows are there "already"
            for src in range(r + 1, world):
                ranks.prepush(r, src, partials[src], call)
        want_out, want_res = _expected(partials, residual, weight, eps)
        outs = [ranks.run(rank, partials[rank], residual, weight, eps) for rank in range(world)]
        for out, res in outs:
            torch.testing.assert_close(res, want_res, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-4)
            assert torch.equal(out, outs[0][0]) and torch.equal(res, outs[0][1])
        for r in range(world):
            assert ranks.epochs[r][:M].tolist() == [call] * M and int(ranks.epochs[r][M:].sum()) == 0
            for src in range(world):
                got = ranks.flags[r][src * FLAGS : (src + 1) * FLAGS]
                assert got[:M].tolist() == [0 if src == r else call] * M and int(got[M:].sum()) == 0


def test_a_flag_one_epoch_ahead_is_read_as_arrived() -> None:
    """The peer already finished this call and pushed its next row (flag e + 1): this rank reads inbox e, intact."""
    ranks = _Ranks(2, torch.float32)
    M, H = 2, 16
    x = [torch.full((M, H), 1.0), torch.full((M, H), 2.0)]
    res, w = torch.zeros(M, H), torch.ones(H)
    ranks.prepush(0, 1, x[1], 1)  # epoch 1's row from rank 1 ...
    ranks.prepush(0, 1, torch.full((M, H), 99.0), 2)  # ... and its epoch-2 row, into the other inbox (flag 2)
    _, summed = ranks.run(0, x[0], res, w, 1e-6)
    assert torch.equal(summed, torch.full((M, H), 3.0))
    assert ranks.flags[1][:M].tolist() == [1, 1]  # rank 0 pushed its epoch-1 row to rank 1
    # Wrapped-around epochs: int32 counts at the top of their range roll over to negative numbers.
    ranks = _Ranks(2, torch.float32)
    top = 2**31 - 1
    for r in range(2):
        ranks.epochs[r][:M] = top - 1  # the next call is epoch top
    ranks.prepush(0, 1, x[1], top)
    got = [ranks.run(r, x[r], res, w, 1e-6)[1] for r in range(2)]
    assert all(torch.equal(g, torch.full((M, H), 3.0)) for g in got)
    ranks.prepush(0, 1, x[1], -(2**31))  # the call after: epoch wraps to -2**31 (inbox 0)
    got = [ranks.run(r, x[r], res, w, 1e-6)[1] for r in range(2)]
    assert all(torch.equal(g, torch.full((M, H), 3.0)) for g in got)
    assert ranks.epochs[0][:M].tolist() == [-(2**31)] * M
