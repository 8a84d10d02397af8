"""Programmatic dependent launch: only inside ``pdl.active()`` on a Hopper GPU, and exact when on."""

from __future__ import annotations

import pytest
import torch

from inferd.kernels import pdl, triton_gemv, triton_ops

HAS_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def test_off_outside_active_and_off_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert pdl.launch_kwargs(cpu) == {"USE_PDL": False}
    with pdl.active():
        assert pdl.launch_kwargs(cpu) == {"USE_PDL": False}
        with pdl.active(False):
            assert not pdl._active
        assert pdl._active
    assert not pdl._active


def _chain(x: torch.Tensor, res: torch.Tensor, w_norm: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor):
    """norm → GEMV (split-K) → SiLU-fused GEMV → norm: every kernel reads the one before it."""
    h, r = triton_ops.fused_add_rms_norm(x, res, w_norm, 1e-6)
    gate_up = triton_gemv.linear(h, w1)
    y = triton_gemv.silu_and_mul_linear(gate_up, w2)
    return triton_ops.fused_add_rms_norm(y, r, w_norm, 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_HOPPER, reason="needs an sm_90+ GPU")
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_pdl_chain_in_a_cuda_graph_equals_plain_launches(rows: int) -> None:
    torch.manual_seed(rows)
    dev, dt = torch.device("cuda"), torch.bfloat16
    hidden, inter = 1024, 3072
    x = torch.randn(rows, hidden, device=dev, dtype=dt)
    res = torch.randn(rows, hidden, device=dev, dtype=dt)
    w_norm = torch.rand(hidden, device=dev, dtype=dt) + 0.5
    w1 = torch.randn(2 * inter, hidden, device=dev, dtype=dt) * 0.03
    w2 = torch.randn(hidden, inter, device=dev, dtype=dt) * 0.03
    plain = _chain(x, res, w_norm, w1, w2)
    with pdl.active():
        _chain(x, res, w_norm, w1, w2)  # compile the PDL variants
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _chain(x, res, w_norm, w1, w2)
    for _ in range(20):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out[0], plain[0]) and torch.equal(out[1], plain[1])
