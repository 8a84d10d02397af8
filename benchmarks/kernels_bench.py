"""GPU micro-benchmark: each Triton kernel vs its pure-torch reference at Qwen3-0.6B shapes (bf16).

    python benchmarks/kernels_bench.py [--block-size 16] [--json out.json]

Times with ``triton.testing.do_bench`` (median, L2 flushed between runs; for small kernels this is the host launch
cost) and, for the Triton kernels, also as a replayed CUDA graph (``do_bench_cudagraph``: launch overhead gone, as in
the engine's decode graphs; attention replays one batch per "layer" over enough KV caches to overflow the L2).
``roof`` is the bytes each kernel must move over ``--bandwidth`` (default 3.0 TB/s, a measured H100 device copy);
prefill attention is compute-bound, so its roof says little. ``--sweep`` times a grid of attention launch configs.
``qk_norm_rope_store`` (the fused attention prologue) is compared with ``qk_prologue_separate``: the q/k
``rms_norm`` + ``rotary_embedding`` + ``store_kv_cache`` launches (and reshape copies) it replaces.
Prints one table; needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import triton
import triton.testing

from inferd.kernels import reference, triton_attention, triton_fused, triton_ops

HIDDEN, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, INTERMEDIATE = 1024, 16, 8, 128, 3072  # Qwen3-0.6B
DTYPE = torch.bfloat16


@dataclass
class Row:
    kernel: str
    shape: str
    triton_us: float
    triton_graph_us: float
    reference_us: float
    roof_us: float

    def line(self) -> str:
        speedup = self.reference_us / self.triton_us
        return (
            f"{self.kernel:<20} {self.shape:<26} {self.triton_us:>10.1f} {self.triton_graph_us:>10.1f} "
            f"{self.reference_us:>11.1f} {speedup:>8.1f}x {self.roof_us:>8.1f}"
        )


def bench(fn: Callable[[], object], graph: bool = False) -> float:
    """Median microseconds of ``fn``; as a replayed CUDA graph when ``graph``."""
    if graph:
        return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def attention_inputs(seq_lens: list[int], query_lens: list[int], block_size: int) -> dict:
    """A shuffled paged cache holding exactly the given sequences, plus their queries."""
    dev = "cuda"
    blocks = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(blocks)
    perm = torch.randperm(num_blocks, device=dev, dtype=torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=dev)
    start = 0
    for b, n in enumerate(blocks):
        table[b, :n] = perm[start : start + n]
        start += n
    shape = (num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    return {
        "query": torch.randn(sum(query_lens), NUM_HEADS, HEAD_DIM, dtype=DTYPE, device=dev),
        "k_cache": torch.randn(shape, dtype=DTYPE, device=dev),
        "v_cache": torch.randn(shape, dtype=DTYPE, device=dev),
        "block_tables": table,
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        "query_start_loc": torch.tensor(
            [0, *itertools.accumulate(query_lens)], dtype=torch.int32, device=dev
        ),
        "max_query_len": max(query_lens),
        "max_seq_len": max(seq_lens),
        "scale": HEAD_DIM**-0.5,
    }


ATTENTION_CASES = [
    *[(f"decode b={b} ctx={c}", [c] * b, [1] * b, None) for b in (1, 64, 256) for c in (512, 2048)],
    ("decode b=1 ctx=512 bound=4096", [512], [1], 4096),  # max_seq_len as a CUDA graph passes it
    ("decode b=8 ctx=1024", [1024] * 8, [1] * 8, None),
    ("prefill 2048", [2048], [2048], None),
    ("prefill 4x512", [512] * 4, [512] * 4, None),
    ("mixed 512+63 dec ctx=1k", [1024] * 64, [512] + [1] * 63, None),
    ("mixed 2x256+254 dec ctx=600", [600] * 256, [256, 256] + [1] * 254, None),
]


def attention_sets(
    seq_lens: list[int], query_lens: list[int], block_size: int, bound: int | None
) -> list[dict]:
    """Enough independent batches (one per model layer, as it were) that their KV caches overflow the L2."""
    kv_bytes = sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * 2 * 2
    sets = [
        attention_inputs(seq_lens, query_lens, block_size)
        for _ in range(max(1, min(32, int(160e6 // kv_bytes))))
    ]
    for a in sets:
        a["max_seq_len"] = bound or a["max_seq_len"]
    return sets


def graph_us_per_set(sets: list[dict]) -> float:
    def run_all() -> None:
        for a in sets:
            triton_attention.paged_attention(**a)

    return bench(run_all, graph=True) / len(sets)


def attention_rows(block_size: int, bandwidth: float) -> list[Row]:
    rows = []
    for name, seq_lens, query_lens, bound in ATTENTION_CASES:
        sets = attention_sets(seq_lens, query_lens, block_size, bound)
        kv_bytes = sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * 2 * 2
        qo_bytes = 2 * sum(query_lens) * NUM_HEADS * HEAD_DIM * 2
        tri = bench(lambda a=sets[0]: triton_attention.paged_attention(**a))
        ref = bench(lambda a=sets[0]: reference.paged_attention(**a))
        roof = 1e6 * (kv_bytes + qo_bytes) / bandwidth
        rows.append(Row("paged_attention", name, tri, graph_us_per_set(sets), ref, roof))
        del sets
    for num_tokens in (256, 2048):
        key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
        value = torch.randn_like(key)
        num_blocks = 4096
        k_cache = torch.empty(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
        v_cache = torch.empty_like(k_cache)
        slots = torch.randperm(num_blocks * block_size, device="cuda")[:num_tokens]
        a = (key, value, k_cache, v_cache, slots)
        nbytes = 4 * key.numel() * 2
        rows.append(
            Row(
                "store_kv_cache",
                f"tokens={num_tokens}",
                bench(lambda a=a: triton_attention.store_kv_cache(*a)),
                bench(lambda a=a: triton_attention.store_kv_cache(*a), graph=True),
                bench(lambda a=a: reference.store_kv_cache(*a)),
                1e6 * nbytes / bandwidth,
            )
        )
    return rows


def elementwise_rows(bandwidth: float) -> list[Row]:
    rows = []
    max_pos = 4096
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM)
    angles = torch.arange(max_pos, device="cuda").float()[:, None] * inv_freq[None, :]
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1)
    for t in (1, 256, 2048):
        x = torch.randn(t, HIDDEN, dtype=DTYPE, device="cuda")
        res = torch.randn_like(x)
        w = torch.randn(HIDDEN, dtype=DTYPE, device="cuda")
        gate_up = torch.randn(t, 2 * INTERMEDIATE, dtype=DTYPE, device="cuda")
        qkv = torch.randn(t, (NUM_HEADS + 2 * NUM_KV_HEADS) * HEAD_DIM, dtype=DTYPE, device="cuda")
        q = qkv[:, : NUM_HEADS * HEAD_DIM].view(t, NUM_HEADS, HEAD_DIM)
        k = qkv[:, NUM_HEADS * HEAD_DIM : (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM].view(
            t, NUM_KV_HEADS, HEAD_DIM
        )
        pos = torch.randint(0, max_pos, (t,), device="cuda")
        xb = x.numel() * 2
        cases = [
            ("rms_norm", (x, w, 1e-6), triton_ops.rms_norm, reference.rms_norm, 2 * xb),
            (
                "fused_add_rms_norm",
                (x, res, w, 1e-6),
                triton_ops.fused_add_rms_norm,
                reference.fused_add_rms_norm,
                4 * xb,
            ),
            (
                "silu_and_mul",
                (gate_up,),
                triton_ops.silu_and_mul,
                reference.silu_and_mul,
                3 * gate_up.numel(),
            ),
            (
                "rotary_embedding",
                (pos, q, k, cos_sin),
                triton_ops.rotary_embedding,
                reference.rotary_embedding,
                4 * (q.numel() + k.numel()),
            ),
        ]
        for name, a, tri_fn, ref_fn, nbytes in cases:
            rows.append(
                Row(
                    name,
                    f"tokens={t}",
                    bench(lambda f=tri_fn, a=a: f(*a)),
                    bench(lambda f=tri_fn, a=a: f(*a), graph=True),
                    bench(lambda f=ref_fn, a=a: f(*a)),
                    1e6 * nbytes / bandwidth,
                )
            )
    return rows


def fused_qk_rows(block_size: int, bandwidth: float) -> list[Row]:
    """The fused attention prologue vs the separate kernels it replaces, at T=1 (decode) and T=256."""
    rows = []
    max_pos, eps, num_blocks = 4096, 1e-6, 4096
    q_size, kv_size = NUM_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM)
    angles = torch.arange(max_pos, device="cuda").float()[:, None] * inv_freq[None, :]
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1)
    q_w = torch.randn(HEAD_DIM, dtype=DTYPE, device="cuda")
    k_w = torch.randn(HEAD_DIM, dtype=DTYPE, device="cuda")
    k_cache = torch.zeros(num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    for t in (1, 256):
        qkv = torch.randn(t, q_size + 2 * kv_size, dtype=DTYPE, device="cuda")
        pos = torch.randint(0, max_pos, (t,), device="cuda")
        slots = torch.randperm(num_blocks * block_size, device="cuda")[:t]
        args = (
            qkv,
            pos,
            cos_sin,
            q_w,
            k_w,
            eps,
            k_cache,
            v_cache,
            slots,
            NUM_HEADS,
            NUM_KV_HEADS,
            HEAD_DIM,
            True,
        )

        def separate(qkv: torch.Tensor = qkv, pos: torch.Tensor = pos, slots: torch.Tensor = slots) -> None:
            q, k, v = qkv.split(
                [q_size, kv_size, kv_size], dim=-1
            )  # DecoderAttention + Attention before fusing
            q = triton_ops.rms_norm(q.reshape(-1, HEAD_DIM), q_w, eps).view(-1, NUM_HEADS, HEAD_DIM)
            k = triton_ops.rms_norm(k.reshape(-1, HEAD_DIM), k_w, eps).view(-1, NUM_KV_HEADS, HEAD_DIM)
            q, k = triton_ops.rotary_embedding(pos, q, k, cos_sin, True)
            v = v.unflatten(-1, (NUM_KV_HEADS, HEAD_DIM))
            triton_attention.store_kv_cache(k, v, k_cache, v_cache, slots)

        ref = bench(lambda a=args: reference.qk_norm_rope_store(*a))
        roof = 1e6 * 2 * (qkv.numel() + t * (q_size + 2 * kv_size)) / bandwidth  # read qkv; write q, k, v
        for name, fn in (
            ("qk_norm_rope_store", lambda a=args: triton_fused.qk_norm_rope_store(*a)),
            ("qk_prologue_separate", separate),
        ):
            rows.append(Row(name, f"tokens={t}", bench(fn), bench(fn, graph=True), ref, roof))
    return rows


def sweep(block_size: int) -> None:
    """Time a grid of launch configs per attention case (graph replays); print the best few of each."""
    launch_config = triton_attention._launch_config
    grid = [
        triton_attention._LaunchConfig(bm, tn, sp, w, st)
        for bm, tn, sp, w, st in itertools.product(
            [16, 64, 128], [32, 64, 128], [1, 4, 16, 32], [4, 8], [2, 3]
        )
    ]
    for name, seq_lens, query_lens, bound in ATTENTION_CASES:
        sets = attention_sets(seq_lens, query_lens, block_size, bound)
        decode = max(query_lens) == 1
        results = [(graph_us_per_set(sets), "default")]
        for cfg in grid:
            if (cfg.num_splits > 1 and not decode) or (decode and cfg.block_m != 16):
                continue
            triton_attention._launch_config = lambda *_, c=cfg: c
            try:
                results.append((graph_us_per_set(sets), str(tuple(cfg))))
            finally:
                triton_attention._launch_config = launch_config
        results.sort()
        print(f"{name:<30} " + "  ".join(f"{t:.1f}us {c}" for t, c in results[:4]), flush=True)
        del sets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s used for the roof column")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--only", choices=["attention", "elementwise", "fused"], default=None)
    parser.add_argument("--sweep", action="store_true", help="tune paged_attention launch configs instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_bench.py needs a CUDA GPU")
    torch.manual_seed(0)
    if args.sweep:
        sweep(args.block_size)
        return
    rows: list[Row] = []
    if args.only in (None, "attention"):
        rows += attention_rows(args.block_size, args.bandwidth)
    if args.only in (None, "elementwise"):
        rows += elementwise_rows(args.bandwidth)
    if args.only in (None, "fused"):
        rows += fused_qk_rows(args.block_size, args.bandwidth)
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, bf16, "
        f"block_size {args.block_size}; times in us (median)"
    )
    print(
        f"{'kernel':<20} {'shape':<26} {'triton':>10} {'tri graph':>10} {'reference':>11} {'speedup':>9} {'roof':>8}"
    )
    for row in rows:
        print(row.line())
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
