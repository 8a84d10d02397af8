"""The skinny GEMM (``triton_gemv.linear``) computes ``F.linear`` for 1..64 rows, and ``kernels.linear`` dispatches
(batches of up to ``triton_gemv.MAX_M`` rows, 16 unless ``INFERD_SKINNY_MAX_M`` says otherwise, to the skinny GEMM);
``triton_gemv.silu_and_mul_linear`` computes ``linear(silu_and_mul(x))`` in the same kernel (``kernels.silu_and_mul_linear``).

On CPU the kernel runs through ``TRITON_INTERPRET=1`` in float32 (relative error <= 1e-4) and float16 (the
interpreter's bfloat16 ``tl.dot`` is wrong, so bf16 is checked on the CPU for one row (no ``tl.dot``) and otherwise on
the GPU); on a GPU in bf16 at every linear shape of Qwen3-0.6B, Qwen3-8B and Llama-3.1-8B (also at tensor parallel 2)
with relative error <= 1e-2. Every float buffer the kernel allocates starts as NaN, so an unwritten output element
fails the test (a split-K tile whose last-arriving program was not recognised is never written). Split-K sums its
partials in a fixed order in one kernel through per-tile arrival counters: results are bit-identical run to run and the
counters are back at zero after every launch.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import triton

if not torch.cuda.is_available():
    os.environ.setdefault(
        "TRITON_INTERPRET", "1"
    )  # before the kernel module defines its @triton.jit functions

from inferd import kernels
from inferd.kernels import reference, triton_gemv, triton_ops
from inferd.kernels.triton_gemv import GemvConfig

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")

_LAYERS = {  # model -> (qkv, o, gate_up, down, lm_head) as (K, N)
    "qwen3-0.6b": ((1024, 4096), (2048, 1024), (1024, 6144), (3072, 1024), (1024, 151936)),
    "qwen3-8b": ((4096, 6144), (4096, 4096), (4096, 24576), (12288, 4096), (4096, 151936)),
    "llama-3.1-8b": ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096), (4096, 128256)),
}
_COLUMN = (True, False, True, False, True)  # tensor parallel splits N of column layers and K of row layers


def _model_shapes() -> list[tuple[int, int]]:
    shapes: dict[tuple[int, int], None] = {}
    for layers in _LAYERS.values():
        for (k, n), column in zip(layers, _COLUMN, strict=True):
            shapes[(k, n)] = None
            shapes[(k, n // 2) if column else (k // 2, n)] = None
    return list(shapes)


MODEL_SHAPES = _model_shapes()
DOWN_SHAPES = list(
    dict.fromkeys(s for layers in _LAYERS.values() for s in (layers[3], (layers[3][0] // 2, layers[3][1])))
)  # (intermediate, hidden) of every down projection, whole and at tensor parallel 2
ODD_SHAPES = [
    (1000, 1000),
    (1040, 4100),
    (4100, 333),
    (3000, 130),
    (200, 70000),
    (3088, 1024),
]  # K, N off the blocks


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fill every floating-point tensor from torch.empty with NaN."""
    empty = torch.empty

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in the output"
    assert out.shape == ref.shape
    diff = (out.double() - ref.double()).norm()
    return (diff / ref.double().norm().clamp_min(1e-30)).item()


def make_inputs(
    m: int, k: int, n: int, dtype: torch.dtype, device: str, bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device).to(dtype)  # [M, K]
    w = (torch.randn(n, k, generator=g, device=device) * k**-0.5).to(dtype)  # [N, K]
    b = torch.randn(n, generator=g, device=device).to(dtype) if bias else None  # [N]
    return x, w, b


def oracle(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """F.linear in float64 on the (already rounded) inputs."""
    return F.linear(x.double(), w.double(), b.double() if b is not None else None)


def silu_oracle(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """linear(silu_and_mul(x)) in float64, the activation rounded to x's dtype as the contract says."""
    inter = x.shape[1] // 2
    h = (F.silu(x[:, :inter].double()) * x[:, inter:].double()).to(x.dtype)  # [M, I]
    return oracle(h, w, b)


def counters_are_zero(device: str) -> bool:
    counters = triton_gemv._COUNTERS.get(torch.device(device))
    return counters is not None and not counters.any()


SPLIT_CONFIGS = [
    GemvConfig(use_dot=False, block_n=16, block_k=64, num_warps=4, num_stages=3, k_split=128),
    GemvConfig(use_dot=False, block_n=8, block_k=64, num_warps=4, num_stages=1, k_split=64),
    GemvConfig(use_dot=True, block_n=16, block_k=64, num_warps=4, num_stages=2, k_split=128),
    GemvConfig(use_dot=True, block_n=32, block_k=32, num_warps=4, num_stages=3),
    GemvConfig(use_dot=True, block_n=16, block_k=16, num_warps=4, num_stages=2, k_split=16),
]


# ---------------------------------------------------------------------------------------------- CPU (interpreter)


@needs_interpreter
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n", [48, 130])
@pytest.mark.parametrize("k", [64, 192])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
def test_linear_matches_reference_fp32(m: int, k: int, n: int, bias: bool) -> None:
    x, w, b = make_inputs(m, k, n, torch.float32, "cpu", bias)
    out = triton_gemv.linear(x, w, b)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    assert rel_err(out, reference.linear(x, w, b)) <= 1e-4


@needs_interpreter
@pytest.mark.parametrize("cfg", SPLIT_CONFIGS, ids=lambda c: c.describe(200).replace(" ", "-"))
@pytest.mark.parametrize("m", [1, 5])
def test_split_k_and_ragged_tiles(cfg: GemvConfig, m: int) -> None:
    """K = 200 leaves a partial last K chunk (and a short last split); N = 70 a partial last column tile;
    up to 13 splits."""
    x, w, b = make_inputs(m, 200, 70, torch.float32, "cpu", bias=True, seed=m)
    assert rel_err(triton_gemv.launch(x, w, b, cfg), oracle(x, w, b)) <= 1e-4


@needs_interpreter
@pytest.mark.parametrize("cfg", SPLIT_CONFIGS, ids=lambda c: c.describe(200).replace(" ", "-"))
@pytest.mark.parametrize("m", [1, 5])
def test_split_k_is_deterministic_and_resets_its_counters(cfg: GemvConfig, m: int) -> None:
    x, w, b = make_inputs(m, 200, 70, torch.float32, "cpu", bias=True, seed=m)
    first = triton_gemv.launch(x, w, b, cfg)
    assert cfg.split_k(200) == 1 or counters_are_zero("cpu")
    again = triton_gemv.launch(x, w, b, cfg)
    assert torch.equal(first, again)


@needs_interpreter
def test_split_k_calls_of_other_shapes_follow_each_other() -> None:
    """Split calls with different column-tile counts and split counts reuse the same counters one after another:
    each must find its counters at zero (a stale count would pick a program that is not the last to arrive, whose sum
    reads NaN workspace)."""
    cases = [  # (m, K, N, cfg)
        (1, 200, 70, SPLIT_CONFIGS[0]),  # 5 tiles x 2 splits
        (3, 300, 130, SPLIT_CONFIGS[4]),  # 9 tiles x 19 splits
        (1, 96, 40, SPLIT_CONFIGS[1]),  # 5 tiles x 2 splits
        (4, 200, 33, SPLIT_CONFIGS[2]),  # 3 tiles x 2 splits
    ]
    outs = []
    for m, k, n, cfg in cases + cases:
        assert cfg.split_k(k) > 1
        x, w, b = make_inputs(m, k, n, torch.float32, "cpu", bias=True, seed=k + n)
        out = triton_gemv.launch(x, w, b, cfg)
        assert rel_err(out, oracle(x, w, b)) <= 1e-4
        assert counters_are_zero("cpu")
        outs.append(out)
    for first, again in zip(outs[: len(cases)], outs[len(cases) :], strict=True):
        assert torch.equal(first, again)


def test_counters_are_allocated_eagerly_and_never_during_a_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    device = torch.device("cpu")
    monkeypatch.setattr(triton_gemv, "_COUNTERS", {})
    monkeypatch.setattr(triton_gemv, "_RETIRED_COUNTERS", [])
    monkeypatch.setattr(triton_gemv, "_capturing", lambda d: True)
    with pytest.raises(RuntimeError, match="CUDA-graph capture"):
        triton_gemv._arrival_counters(device, 8)
    monkeypatch.setattr(triton_gemv, "_capturing", lambda d: False)
    small = triton_gemv._arrival_counters(device, 8)
    assert small.dtype == torch.int32 and small.numel() >= 4096 and not small.any()
    assert triton_gemv._arrival_counters(device, 4096) is small  # big enough: reused
    monkeypatch.setattr(triton_gemv, "_capturing", lambda d: True)
    assert triton_gemv._arrival_counters(device, 100) is small  # no allocation needed: fine while capturing
    with pytest.raises(RuntimeError, match="run the same call once eagerly"):
        triton_gemv._arrival_counters(device, 5000)
    monkeypatch.setattr(triton_gemv, "_capturing", lambda d: False)
    grown = triton_gemv._arrival_counters(device, 5000)
    assert grown.numel() >= 5000 and not grown.any()
    assert triton_gemv._RETIRED_COUNTERS == [small]  # a graph captured earlier may still use the old buffer


@needs_interpreter
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(64, 48), (200, 70), (192, 130), (1000, 24)], ids=lambda s: f"I{s[0]}-N{s[1]}"
)
@pytest.mark.parametrize("m", [1, 3, 8, 16])
def test_silu_and_mul_linear_matches_reference(
    m: int, shape: tuple[int, int], dtype: torch.dtype, bias: bool
) -> None:
    inter, n = shape
    x, w, b = make_inputs(m, 2 * inter, n, dtype, "cpu", bias, seed=m + inter)
    w = w[:, :inter].contiguous()  # [N, I]
    out = triton_gemv.silu_and_mul_linear(x, w, b)
    assert out.dtype == dtype and out.shape == (m, n)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    assert rel_err(out, silu_oracle(x, w, b)) <= tol
    assert rel_err(out, reference.silu_and_mul_linear(x, w, b)) <= tol
    assert torch.equal(
        out, triton_gemv.linear(triton_ops.silu_and_mul(x), w, b)
    )  # same math as the two kernels


@needs_interpreter
@pytest.mark.parametrize("cfg", SPLIT_CONFIGS, ids=lambda c: c.describe(200).replace(" ", "-"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m", [1, 5])
def test_silu_and_mul_linear_split_configs(cfg: GemvConfig, m: int, dtype: torch.dtype) -> None:
    """Every config, split or not, ragged K and N: the fused kernel equals silu_and_mul then the same config's linear
    bit for bit, is deterministic and leaves the counters at zero."""
    if dtype == torch.bfloat16 and (m > 1 or cfg.use_dot):
        pytest.skip("the interpreter's bfloat16 tl.dot is wrong (checked on the GPU)")
    x, w, b = make_inputs(m, 400, 70, dtype, "cpu", bias=True, seed=m)
    w = w[:, :200].contiguous()  # [70, 200]
    out = triton_gemv.launch(x, w, b, cfg, silu_mul=True)
    assert rel_err(out, silu_oracle(x, w, b)) <= {torch.float32: 1e-4, torch.float16: 2e-3}.get(dtype, 1e-2)
    assert torch.equal(out, triton_gemv.launch(triton_ops.silu_and_mul(x), w, b, cfg))
    assert cfg.split_k(200) == 1 or counters_are_zero("cpu")
    assert torch.equal(out, triton_gemv.launch(x, w, b, cfg, silu_mul=True))


@needs_interpreter
@pytest.mark.parametrize("m", [1, 4])
def test_silu_and_mul_linear_strided_rows(m: int) -> None:
    x_wide, w, b = make_inputs(m, 512, 96, torch.float32, "cpu", bias=True)
    x = x_wide[:, :320]  # [M, 2 * 160], row stride 512: the up half starts 160 elements into each row
    w = w[:, :160]  # a view with row stride 512
    out = triton_gemv.silu_and_mul_linear(x, w, b)
    assert rel_err(out, silu_oracle(x, w, b)) <= 1e-4


@needs_interpreter
@pytest.mark.parametrize("m", [1, 4])
def test_fp16_and_strided_rows(m: int) -> None:
    x_wide, w, b = make_inputs(m, 256, 96, torch.float16, "cpu", bias=True)
    x = x_wide[:, :160]  # row stride 256: a view, not a copy
    out = triton_gemv.linear(x, w[:, :160], b)
    assert out.dtype == torch.float16
    assert rel_err(out, oracle(x, w[:, :160], b)) <= 2e-3


def test_pick_config_splits_k_only_for_narrow_outputs() -> None:
    sms = 132
    narrow = triton_gemv.pick_config(1, 1024, 8192, torch.bfloat16, sms)  # 16 MiB, 64 column tiles
    wide = triton_gemv.pick_config(1, 151936, 1024, torch.bfloat16, sms)  # lm_head
    assert narrow.split_k(8192) > 1 and narrow.k_split % narrow.block_k == 0
    assert wide.split_k(1024) == 1
    for m in (2, 8, 16):  # 8B-sized weights (over 12 MiB) split K until the tiles fill the GPU
        cfg = triton_gemv.pick_config(m, 4096, 4096, torch.bfloat16, sms)
        assert cfg.use_dot and cfg.block_n >= 16
        assert (4096 // cfg.block_n) * cfg.split_k(4096) >= sms


def test_pick_config_small_weights_take_few_long_programs() -> None:
    """16-bit weights up to 12 MiB on the tensor-core path (Qwen3-0.6B's layers): whole-K tiles, or 384-long K
    slices at K >= 3072 (the H100 sweep's best); FMA (1 row), float32 and larger weights keep the table."""
    sms = 132
    for m in (2, 8, 16, 32, 64):
        for n, k, block_n, split in (
            (4096, 1024, 64, 1),
            (1024, 2048, 64, 1),
            (6144, 1024, 64, 1),
            (1024, 3072, 32, 8),
        ):
            cfg = triton_gemv.pick_config(m, n, k, torch.bfloat16, sms)
            assert (cfg.use_dot, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (
                True,
                block_n,
                128,
                4,
                4,
            )
            assert cfg.split_k(k) == split
    assert triton_gemv.pick_config(8, 1024, 3072, torch.float32, sms).block_n == 32  # float32 table entry
    assert triton_gemv.pick_config(8, 4096, 2048, torch.bfloat16, sms).split_k(2048) > 1  # 16 MiB: the table


def test_pick_config_one_row_of_small_weights_never_splits_k() -> None:
    """One row of 16-bit weights up to 12 MiB (Qwen3-0.6B's layers) on the FMA path: whole-K programs, 8 columns each
    for outputs of at least 16 columns per SM, else 4 columns in long K blocks (the H100 sweep's best, run-s6-6)."""
    sms = 132
    wide, narrow = (8, 256, 4, 3), (4, 2048, 8, 1)
    for dtype in (torch.bfloat16, torch.float16):
        for n, k, want in (
            (4096, 1024, wide),
            (6144, 1024, wide),
            (1024, 2048, narrow),
            (1024, 3072, narrow),
        ):
            cfg = triton_gemv.pick_config(1, n, k, dtype, sms)
            assert (cfg.use_dot, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (False, *want)
            assert cfg.split_k(k) == 1
    small_k = triton_gemv.pick_config(1, 960, 576, torch.bfloat16, sms)  # block_k shrinks to cover K once
    assert (small_k.block_n, small_k.block_k, small_k.split_k(576)) == (4, 1024, 1)
    # float32, and weights over 12 MiB, keep the table (split K where the column tiles leave SMs idle)
    assert triton_gemv.pick_config(1, 1024, 2048, torch.float32, sms).split_k(2048) > 1
    big = triton_gemv.pick_config(1, 4096, 4096, torch.bfloat16, sms)
    assert (big.block_n, big.block_k, big.num_warps, big.num_stages) == (16, 512, 8, 3)


def test_linear_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="weight"):
        triton_gemv.linear(torch.zeros(2, 8), torch.zeros(4, 9))
    with pytest.raises(ValueError, match="bias"):
        triton_gemv.linear(torch.zeros(2, 8), torch.zeros(4, 8), torch.zeros(5))
    with pytest.raises(ValueError, match="at most 64"):
        triton_gemv.linear(torch.zeros(65, 8), torch.zeros(4, 8))
    too_many_splits = GemvConfig(use_dot=False, block_n=8, block_k=16, num_warps=4, num_stages=1, k_split=16)
    with pytest.raises(ValueError, match="splits"):
        triton_gemv.launch(torch.zeros(1, 16 * 65), torch.zeros(4, 16 * 65), None, too_many_splits)
    with pytest.raises(ValueError, match="2 \\* K"):
        triton_gemv.silu_and_mul_linear(torch.zeros(2, 8), torch.zeros(4, 8))


@needs_interpreter
def test_dispatch_silu_and_mul_linear_falls_back_off_cuda() -> None:
    x, w, b = make_inputs(4, 96, 48, torch.float32, "cpu", bias=True)
    w = w[:, :48].contiguous()
    expected = F.linear(triton_ops.silu_and_mul(x), w, b)
    assert torch.equal(triton_gemv.dispatch_silu_and_mul_linear(x, w, b), expected)


def test_dispatch_falls_back_to_f_linear_off_cuda() -> None:
    x, w, b = make_inputs(4, 64, 48, torch.float32, "cpu", bias=True)
    assert torch.equal(triton_gemv.dispatch_linear(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("flag", ["1", "0"])
def test_select_backend_installs_linear(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.setenv("INFERD_KERNEL_BACKEND", "triton")
    monkeypatch.setenv("INFERD_SKINNY_GEMM", flag)
    try:
        kernels.select_backend("cuda")
        expected = triton_gemv.dispatch_linear if flag == "1" else reference.linear
        assert kernels.linear is expected
        fused = triton_gemv.dispatch_silu_and_mul_linear
        assert kernels.silu_and_mul_linear is (fused if flag == "1" else kernels._unfused_silu_and_mul_linear)
        if (
            flag == "0" and INTERPRET
        ):  # the two kernels: Triton silu_and_mul, then linear on cuBLAS (here F.linear)
            x, w, b = make_inputs(3, 64, 40, torch.float32, "cpu", bias=True)
            w = w[:, :32].contiguous()
            expected_out = reference.linear(triton_ops.silu_and_mul(x), w, b)
            assert torch.equal(kernels.silu_and_mul_linear(x, w, b), expected_out)
    finally:
        monkeypatch.delenv("INFERD_KERNEL_BACKEND")
        kernels.select_backend("cpu")
    assert kernels.linear is reference.linear
    assert kernels.silu_and_mul_linear is reference.silu_and_mul_linear


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_mlp_fuses_the_activation_into_the_down_projection(bias: bool) -> None:
    """RowLinear(silu_mul_input=True) and DecoderMLP (tensor parallel 1, reference kernels) equal the unfused layers;
    tests/e2e/test_tp.py checks tensor parallel 2 end to end."""
    from inferd.layers.linear import RowLinear
    from inferd.models.llama import DecoderMLP

    torch.manual_seed(0)
    mlp = DecoderMLP(32, 48, bias)
    for p in mlp.parameters():
        p.data.copy_(torch.randn_like(p))
    x = torch.randn(5, 32)
    gate_up = mlp.gate_up_proj(x)  # [5, 96]
    assert isinstance(mlp.down_proj, RowLinear)
    unfused = mlp.down_proj(reference.silu_and_mul(gate_up))
    assert torch.equal(mlp.down_proj(gate_up, silu_mul_input=True), unfused)
    assert torch.equal(mlp(x), unfused)


WIDE_M = [17, 32, 33, 64]  # BLOCK_M 32 (17, 32) and 64 (33, 64): padded rows on both sides of each bound
WIDE_SPLIT = GemvConfig(use_dot=True, block_n=32, block_k=32, num_warps=4, num_stages=2, k_split=32)


@needs_interpreter
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("n", [48, 80])
@pytest.mark.parametrize("k", [64, 96])
@pytest.mark.parametrize("m", WIDE_M)
def test_wide_batches_match_reference(m: int, k: int, n: int, bias: bool) -> None:
    """17..64 rows (the dot path with BLOCK_M 32 / 64) with the table's config; K = 96 and N = 80 leave partial tiles."""
    x, w, b = make_inputs(m, k, n, torch.float32, "cpu", bias, seed=m + k + n)
    out = triton_gemv.linear(x, w, b)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    assert rel_err(out, oracle(x, w, b)) <= 1e-4
    cfg = triton_gemv.pick_config(m, n, k, torch.float32, 132)
    assert cfg.use_dot
    assert torch.equal(out, triton_gemv.launch(x, w, b, cfg))


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n", [48, 80])
@pytest.mark.parametrize("k", [64, 96])
@pytest.mark.parametrize("m", WIDE_M)
def test_wide_batches_split_k(m: int, k: int, n: int, dtype: torch.dtype) -> None:
    """17..64 rows split over K (2 or 3 splits of 32): right, deterministic, and the counters end at zero."""
    assert WIDE_SPLIT.split_k(k) > 1
    x, w, b = make_inputs(m, k, n, dtype, "cpu", bias=True, seed=m)
    out = triton_gemv.launch(x, w, b, WIDE_SPLIT)
    assert out.dtype == dtype and out.shape == (m, n)
    assert rel_err(out, oracle(x, w, b)) <= (1e-4 if dtype == torch.float32 else 2e-3)
    assert counters_are_zero("cpu")
    assert torch.equal(out, triton_gemv.launch(x, w, b, WIDE_SPLIT))


@needs_interpreter
@pytest.mark.parametrize("cfg", [None, WIDE_SPLIT], ids=["table", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_silu_and_mul_linear_wide_batch(dtype: torch.dtype, cfg: GemvConfig | None) -> None:
    """The fused activation at 40 rows (BLOCK_M 64), ragged N, with bias: equals silu_and_mul then the same
    config's linear bit for bit."""
    m, inter, n = 40, 96, 80
    x, w, b = make_inputs(m, 2 * inter, n, dtype, "cpu", bias=True, seed=inter)
    w = w[:, :inter].contiguous()  # [N, I]
    if cfg is None:
        out = triton_gemv.silu_and_mul_linear(x, w, b)
        two = triton_gemv.linear(triton_ops.silu_and_mul(x), w, b)
    else:
        out = triton_gemv.launch(x, w, b, cfg, silu_mul=True)
        two = triton_gemv.launch(triton_ops.silu_and_mul(x), w, b, cfg)
        assert counters_are_zero("cpu")
    assert out.dtype == dtype and out.shape == (m, n)
    assert rel_err(out, silu_oracle(x, w, b)) <= (1e-4 if dtype == torch.float32 else 2e-3)
    assert torch.equal(out, two)


def test_wide_batches_reject_more_than_64_rows() -> None:
    x, w = torch.zeros(65, 64), torch.zeros(48, 64)
    cfg = GemvConfig(use_dot=True, block_n=32, block_k=64, num_warps=4, num_stages=2)
    with pytest.raises(ValueError, match="at most 64 rows; got 65"):
        triton_gemv.launch(x, w, None, cfg)
    with pytest.raises(ValueError, match="at most 64 rows"):
        triton_gemv.linear(x, w)
    with pytest.raises(ValueError, match="at most 64 rows"):
        triton_gemv.silu_and_mul_linear(torch.zeros(65, 128), w)


def test_pick_config_for_wide_batches() -> None:
    """Rows pad to 16, 32 or 64; 2..16 rows take the table entry (weights over 12 MiB); the float32 tiles of 17..64
    rows fit in ~100 KB of shared memory."""
    assert [triton_gemv.dot_block_m(m) for m in (1, 2, 16, 17, 32, 33, 64)] == [16, 16, 16, 32, 32, 64, 64]
    sms = 132
    for m in range(2, 17):
        cfg = triton_gemv.pick_config(m, 4096, 4096, torch.bfloat16, sms)
        assert (cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (64, 128, 4, 4)
        cfg = triton_gemv.pick_config(m, 4096, 1024, torch.float32, sms)
        assert (cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages) == (32, 64, 4, 2)
    for m in range(17, triton_gemv.KERNEL_MAX_M + 1):
        block_m = triton_gemv.dot_block_m(m)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for n, k in ((4096, 1024), (1024, 3072), (151936, 1024)):
                cfg = triton_gemv.pick_config(m, n, k, dtype, sms)
                assert cfg.use_dot and cfg.block_n >= 16 and cfg.block_k >= 16
                assert cfg.split_k(k) == 1 or cfg.k_split % cfg.block_k == 0
                smem = cfg.num_stages * (cfg.block_n + block_m) * cfg.block_k * dtype.itemsize
                assert smem <= (100 if dtype == torch.float32 else 200) * 1024
        narrow = triton_gemv.pick_config(m, 4096, 14336, torch.bfloat16, sms)  # down_proj of Llama-3.1-8B
        assert (4096 // narrow.block_n) * narrow.split_k(14336) >= sms


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 16), ("", 16), ("  ", 16), ("1", 1), ("16", 16), (" 32 ", 32), ("64", 64)]
)
def test_skinny_max_m_parses(value: str | None, expected: int) -> None:
    assert triton_gemv.parse_skinny_max_m(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "65", "128", "abc", "16.0", "1e1", "0x10"])
def test_skinny_max_m_rejects_bad_values(value: str) -> None:
    with pytest.raises(ValueError, match=r"INFERD_SKINNY_MAX_M must be an integer in 1\.\.64"):
        triton_gemv.parse_skinny_max_m(value)


def test_skinny_max_m_comes_from_the_environment_at_import() -> None:
    assert triton_gemv.MAX_M == triton_gemv.parse_skinny_max_m(os.environ.get("INFERD_SKINNY_MAX_M"))
    assert 1 <= triton_gemv.MAX_M <= triton_gemv.KERNEL_MAX_M


# ---------------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"K{s[0]}-N{s[1]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_odd_shapes_with_bias(shape: tuple[int, int], m: int, dtype: torch.dtype) -> None:
    k, n = shape
    x, w, b = make_inputs(m, k, n, dtype, "cuda", bias=True, seed=k + m)
    out = triton_gemv.linear(x, w, b)
    assert out.dtype == dtype
    assert rel_err(out, oracle(x, w, b)) <= (1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("shape", [(2048, 1024), (1024, 4096)], ids=["split-k", "no-split"])
def test_replays_in_a_cuda_graph(shape: tuple[int, int], m: int) -> None:
    k, n = shape
    x, w, b = make_inputs(m, k, n, torch.bfloat16, "cuda", bias=True)
    static_x = x.clone()
    triton_gemv.linear(static_x, w, b)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_gemv.linear(static_x, w, b)
    for seed in range(2):
        static_x.copy_(make_inputs(m, k, n, torch.bfloat16, "cuda", bias=False, seed=seed + 1)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, oracle(static_x, w, b)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
def test_dispatch_on_cuda() -> None:
    x, w, b = make_inputs(triton_gemv.MAX_M + 1, 1024, 512, torch.bfloat16, "cuda", bias=True)
    assert torch.equal(triton_gemv.dispatch_linear(x, w, b), F.linear(x, w, b))  # MAX_M + 1 rows: cuBLAS
    assert torch.equal(triton_gemv.dispatch_linear(x[:4], w, b), triton_gemv.linear(x[:4], w, b))
    xt = x[:4].t().contiguous().t()  # non-contiguous rows: cuBLAS
    assert torch.equal(triton_gemv.dispatch_linear(xt, w, b), F.linear(xt, w, b))
    assert rel_err(triton_gemv.dispatch_linear(x[:4], w, b), oracle(x[:4], w, b)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize(
    "shape", [(2048, 1024), (3072, 1024), (12288, 1024), (1024, 512)], ids=lambda s: f"K{s[0]}-N{s[1]}"
)
def test_split_k_is_deterministic_on_gpu(shape: tuple[int, int], m: int) -> None:
    """The memory-ordering check of the split-K arrival counters: the last program to arrive must see every other
    program's partials. A stale read shows up as a run-to-run difference or an error vs the unsplit kernel."""
    k, n = shape
    cfg = triton_gemv.pick_config(m, n, k, torch.bfloat16, triton_gemv._sm_count(torch.device("cuda")))
    if cfg.split_k(k) == 1:
        # Small weights take whole-K programs: split them here (with shorter K blocks if need be).
        block_k = min(cfg.block_k, triton.next_power_of_2(k) // 4)
        cfg = replace(cfg, block_k=block_k, k_split=max(block_k, k // 4 // block_k * block_k))
    assert cfg.split_k(k) > 1
    x, w, b = make_inputs(m, k, n, torch.bfloat16, "cuda", bias=True, seed=m)
    first = triton_gemv.launch(x, w, b, cfg)
    outs = [triton_gemv.launch(x, w, b, cfg) for _ in range(200)]
    torch.cuda.synchronize()
    assert all(torch.equal(first, o) for o in outs)
    assert counters_are_zero("cuda:0")
    unsplit = triton_gemv.launch(x, w, b, replace(cfg, k_split=0))
    assert rel_err(first, unsplit.float()) <= 1e-2
    assert rel_err(first, oracle(x, w, b)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 24, 64])
@pytest.mark.parametrize("shape", DOWN_SHAPES, ids=lambda s: f"I{s[0]}-N{s[1]}")
def test_silu_and_mul_linear_equals_the_two_kernels_bf16(shape: tuple[int, int], m: int) -> None:
    """The fused MLP down projection gives the unfused path's bits (Triton silu_and_mul, then the skinny GEMM)."""
    inter, n = shape
    x, w, _ = make_inputs(m, 2 * inter, n, torch.bfloat16, "cuda", bias=False, seed=m)
    w = w[:, :inter].contiguous()
    out = triton_gemv.silu_and_mul_linear(x, w)
    assert torch.equal(out, triton_gemv.linear(triton_ops.silu_and_mul(x), w))
    assert torch.equal(out, triton_gemv.silu_and_mul_linear(x, w))
    assert rel_err(out, silu_oracle(x, w, None)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize(
    "shape", [(1000, 1000), (4100, 333), (3000, 130), (1544, 1024)], ids=lambda s: f"I{s[0]}-N{s[1]}"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_silu_and_mul_linear_odd_shapes_with_bias(shape: tuple[int, int], m: int, dtype: torch.dtype) -> None:
    inter, n = shape
    x, w, b = make_inputs(m, 2 * inter, n, dtype, "cuda", bias=True, seed=inter + m)
    w = w[:, :inter].contiguous()
    out = triton_gemv.silu_and_mul_linear(x, w, b)
    assert rel_err(out, silu_oracle(x, w, b)) <= (1e-4 if dtype == torch.float32 else 1e-2)
    assert torch.equal(out, triton_gemv.linear(triton_ops.silu_and_mul(x), w, b))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 8])
@pytest.mark.parametrize("shape", [(3072, 1024), (1024, 4096)], ids=["narrow", "wide"])
def test_silu_and_mul_linear_replays_in_a_cuda_graph(shape: tuple[int, int], m: int) -> None:
    inter, n = shape
    x, w, b = make_inputs(m, 2 * inter, n, torch.bfloat16, "cuda", bias=True)
    w = w[:, :inter].contiguous()
    static_x = x.clone()
    triton_gemv.silu_and_mul_linear(static_x, w, b)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_gemv.silu_and_mul_linear(static_x, w, b)
    for seed in range(3):
        static_x.copy_(make_inputs(m, 2 * inter, n, torch.bfloat16, "cuda", bias=False, seed=seed + 1)[0])
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, triton_gemv.silu_and_mul_linear(static_x, w, b))
        assert rel_err(out, silu_oracle(static_x, w, b)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
def test_dispatch_silu_and_mul_linear_on_cuda() -> None:
    x, w, b = make_inputs(triton_gemv.MAX_M + 1, 2048, 512, torch.bfloat16, "cuda", bias=True)
    w = w[:, :1024].contiguous()
    unfused = F.linear(triton_ops.silu_and_mul(x), w, b)  # MAX_M + 1 rows: Triton silu_and_mul, then cuBLAS
    assert torch.equal(triton_gemv.dispatch_silu_and_mul_linear(x, w, b), unfused)
    fused = triton_gemv.dispatch_silu_and_mul_linear(x[:4], w, b)
    assert torch.equal(fused, triton_gemv.silu_and_mul_linear(x[:4], w, b))
    assert rel_err(fused, silu_oracle(x[:4], w, b)) <= 1e-2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 17, 24, 32, 48, 64])
@pytest.mark.parametrize("shape", MODEL_SHAPES, ids=lambda s: f"K{s[0]}-N{s[1]}")
def test_model_shapes_bf16(shape: tuple[int, int], m: int) -> None:
    """1..64 rows (BLOCK_M 16 / 32 / 64 on the tensor-core path) at every model shape, split or not as the table
    says: right and deterministic."""
    k, n = shape
    x, w, b = make_inputs(m, k, n, torch.bfloat16, "cuda", bias=True, seed=m)
    out = triton_gemv.linear(x, w, b)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, oracle(x, w, b)) <= 1e-2
    assert torch.equal(out, triton_gemv.linear(x, w, b))
    torch.cuda.synchronize()
    counters = triton_gemv._COUNTERS.get(x.device)  # None until a split launch on this device
    assert counters is None or not counters.any()


@pytest.mark.gpu
@needs_cuda
def test_dispatch_follows_max_m_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MAX_M = 64 (INFERD_SKINNY_MAX_M=64) 17..64 rows go to the skinny kernel, 65 to cuBLAS."""
    monkeypatch.setattr(triton_gemv, "MAX_M", 64)
    x, w, b = make_inputs(65, 1024, 512, torch.bfloat16, "cuda", bias=True)
    assert torch.equal(triton_gemv.dispatch_linear(x, w, b), F.linear(x, w, b))
    for m in (17, 40, 64):
        assert torch.equal(triton_gemv.dispatch_linear(x[:m], w, b), triton_gemv.linear(x[:m], w, b))
    xs = torch.cat([x, x], dim=1)  # [65, 2048]: gate | up
    w2 = make_inputs(1, 1024, 512, torch.bfloat16, "cuda", bias=False, seed=1)[1]
    fused = triton_gemv.dispatch_silu_and_mul_linear(xs[:40], w2, b)
    assert torch.equal(fused, triton_gemv.silu_and_mul_linear(xs[:40], w2, b))


# ------------------------------------------------------------------ add_rms_norm_linear (pre-norm fused in the GEMV)


def norm_oracle(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    nw: torch.Tensor,
    eps: float,
    w: torch.Tensor,
    b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(h)) in float64, h) with h = x + residual rounded to x's dtype (the contract's sum)."""
    h = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    hd = h.double()
    normed = hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + eps) * nw.double()
    return F.linear(normed, w.double(), b.double() if b is not None else None), h


def make_norm_inputs(
    m: int, k: int, n: int, dtype: torch.dtype, device: str, bias: bool, residual: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, w, b = make_inputs(m, k, n, dtype, device, bias, seed)
    g = torch.Generator(device=device).manual_seed(seed + 100)
    res = (torch.randn(m, k, generator=g, device=device) * 3).to(dtype) if residual else None
    nw = (1 + 0.5 * torch.randn(k, generator=g, device=device)).to(dtype)
    return x, res, nw, w, b


@needs_interpreter
@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(64, 48), (192, 130), (100, 24)], ids=lambda s: f"K{s[0]}-N{s[1]}")
@pytest.mark.parametrize("m", [1, 3, 16])
def test_add_rms_norm_linear_matches_reference(
    m: int, shape: tuple[int, int], dtype: torch.dtype, bias: bool, residual: bool
) -> None:
    """The fused pre-norm GEMV: the product of rms_norm(x + residual) and the new residual, against float64 and the
    reference composition (norm kernel, then linear); x and the residual are left untouched."""
    if dtype == torch.bfloat16 and m > 1:
        pytest.skip("the interpreter's bfloat16 tl.dot is wrong (checked on the GPU)")
    k, n = shape
    x, res, nw, w, b = make_norm_inputs(m, k, n, dtype, "cpu", bias, residual, seed=m + k)
    x0, res0 = x.clone(), None if res is None else res.clone()
    out, h = triton_gemv.add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    want, want_h = norm_oracle(x, res, nw, 1e-6, w, b)
    assert out.dtype == dtype and out.shape == (m, n)
    if (
        dtype == torch.bfloat16
    ):  # the interpreter truncates float32 -> bfloat16 (the GPU test checks the bits)
        assert torch.allclose(h.float(), want_h.float(), rtol=8e-3, atol=0)
        want_h = h
    assert torch.equal(h, want_h)
    assert (h is x) == (res is None)
    tol = {torch.float32: 1e-4, torch.float16: 2e-3}.get(dtype, 1e-2)
    assert rel_err(out, want) <= tol
    ref_out, ref_h = reference.add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    assert dtype == torch.bfloat16 or torch.equal(h, ref_h)
    assert rel_err(out, ref_out.to(torch.float64)) <= tol
    assert torch.equal(x, x0) and (res is None or torch.equal(res, res0))


@needs_interpreter
def test_add_rms_norm_linear_rejects_a_split_config() -> None:
    x, res, nw, w, b = make_norm_inputs(2, 256, 40, torch.float32, "cpu", False, True)
    cfg = GemvConfig(use_dot=True, block_n=16, block_k=64, num_warps=4, num_stages=2, k_split=128)
    with pytest.raises(ValueError, match="whole-K"):
        triton_gemv.launch(x, w, b, cfg, norm=(res, nw, 1e-6, torch.empty_like(x)))


def test_dispatch_add_rms_norm_linear_falls_back_off_cuda() -> None:
    """Off CUDA (and for rows the skinny kernel does not take) the norm kernel runs, then dispatch_linear."""
    x, res, nw, w, b = make_norm_inputs(3, 64, 32, torch.float32, "cpu", True, True)
    out, h = triton_gemv.dispatch_add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    want, want_h = norm_oracle(x, res, nw, 1e-6, w, b)
    assert torch.equal(h, want_h) and rel_err(out, want) <= 1e-5


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
@pytest.mark.parametrize("m", [1, 2, 5, 8, 16])
@pytest.mark.parametrize(
    "shape",
    [(1024, 4096), (1024, 6144), (1024, 151936), (4096, 6144), (4096, 128256), (1000, 1000), (1024, 130)],
    ids=lambda s: f"K{s[0]}-N{s[1]}",
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_add_rms_norm_linear_on_gpu(
    shape: tuple[int, int], m: int, residual: bool, dtype: torch.dtype
) -> None:
    """The model's pre-norm projections (qkv, gate_up, lm head of Qwen3-0.6B / the 8B shapes) and odd ones, through
    the dispatcher: fused where the config takes whole K, the two kernels otherwise; bf16 within 1e-2 of float64."""
    k, n = shape
    x, res, nw, w, b = make_norm_inputs(m, k, n, dtype, "cuda", True, residual, seed=m + n)
    out, h = triton_gemv.dispatch_add_rms_norm_linear(x, res, nw, 1e-6, w, b)
    want, want_h = norm_oracle(x, res, nw, 1e-6, w, b)
    assert torch.equal(h, want_h)
    assert rel_err(out, want) <= (1e-4 if dtype == torch.float32 else 1e-2)
    if res is None:
        normed = triton_ops.rms_norm(x, nw, 1e-6)
    else:
        normed, _ = triton_ops.fused_add_rms_norm(x, res, nw, 1e-6)
    two = triton_gemv.dispatch_linear(normed, w, b)  # the two-kernel path
    assert rel_err(out, two.double()) <= (1e-4 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 8])
def test_add_rms_norm_linear_replays_in_a_cuda_graph(m: int) -> None:
    x, res, nw, w, b = make_norm_inputs(m, 1024, 4096, torch.bfloat16, "cuda", False, True)
    static_x, static_res = x.clone(), res.clone()
    triton_gemv.add_rms_norm_linear(static_x, static_res, nw, 1e-6, w, b)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, h = triton_gemv.add_rms_norm_linear(static_x, static_res, nw, 1e-6, w, b)
    for seed in range(2):
        x2, res2, *_ = make_norm_inputs(m, 1024, 4096, torch.bfloat16, "cuda", False, True, seed=seed + 1)
        static_x.copy_(x2)
        static_res.copy_(res2)
        graph.replay()
        torch.cuda.synchronize()
        want, want_h = norm_oracle(static_x, static_res, nw, 1e-6, w, b)
        assert torch.equal(h, want_h) and rel_err(out, want) <= 1e-2
