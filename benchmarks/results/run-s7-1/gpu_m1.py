"""Session 7, call 1: one-row skinny-GEMM configs on Qwen3-0.6B shapes (FMA path, PDL, in CUDA graphs), with the
weights of one-block programs loaded before the PDL wait (PRELOAD_ONE_BLOCK) on and off. argv[1]: output JSON.
It ran on a tree with preload.diff (next to this file) applied; that change was not landed, so apply it first."""
import json
import sys
from dataclasses import asdict, replace

import torch
import torch.nn.functional as F

sys.path.insert(0, "benchmarks")
from gemv_bench import graph_us, make_weights  # noqa: E402

from inferd.kernels import pdl, triton_gemv  # noqa: E402
from inferd.kernels.triton_gemv import GemvConfig, fit_config, pick_config  # noqa: E402

sms = torch.cuda.get_device_properties(0).multi_processor_count
one_block = {1024: [(8, 1024, 4, 1), (8, 1024, 8, 1), (4, 1024, 4, 1), (16, 1024, 8, 1), (4, 1024, 2, 1),
                    (2, 1024, 2, 1), (16, 1024, 4, 1)],
             2048: [(4, 2048, 8, 1), (2, 2048, 4, 1), (8, 2048, 8, 1), (4, 2048, 4, 1), (2, 2048, 8, 1)],
             3072: [(4, 4096, 8, 1), (2, 4096, 4, 1), (8, 4096, 8, 1), (4, 4096, 4, 1), (2, 4096, 8, 1)]}
results = {}
for K, N in [(1024, 4096), (2048, 1024), (1024, 6144), (3072, 1024)]:
    ws = make_weights(K, N, 20, 256 * 2**20)
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    table = pick_config(1, N, K, torch.bfloat16, sms)
    cands = [table] + [replace(fit_config(GemvConfig(False, *b), N, K, sms, 1), k_split=0) for b in one_block[K]]
    cands = list(dict.fromkeys(cands))
    timed = []
    with pdl.active():
        for c in cands:
            for pre in (True, False):
                triton_gemv.PRELOAD_ONE_BLOCK = pre
                try:
                    out = triton_gemv.launch(x, ws[0], None, c).float()
                    ref = F.linear(x.float(), ws[0].float())
                    err = ((out - ref).norm() / ref.norm()).item()
                    us = graph_us(lambda a, w, c=c: triton_gemv.launch(a, w, None, c), x, ws, 20, 10)
                    timed.append((us, err, pre, c))
                except Exception as e:
                    print(f"K={K} N={N} {c} pre={pre}: {type(e).__name__}: {str(e)[:150]}")
    triton_gemv.PRELOAD_ONE_BLOCK = True
    t_table = next(t for t in timed if t[3] == table and t[2])
    timed.sort(key=lambda t: t[0])
    best = next(t for t in timed if t[2])
    print(f"K={K} N={N}: table {t_table[0]:.2f} us ({table.describe(K)}), best {best[0]:.2f} us "
          f"({best[3].describe(K)}, preload, err {best[1]:.1e}); all: "
          + "; ".join(f"{u:.2f} {c.describe(K)}{' pre' if p else ''}" for u, _, p, c in timed), flush=True)
    results[f"{N}x{K}"] = {"table_us": t_table[0], "table": asdict(table), "best_us": best[0], "best": asdict(best[3]),
                           "err": best[1], "all": [{"us": u, "err": e, "preload": p, **asdict(c)}
                                                   for u, e, p, c in timed]}
json.dump(results, open(sys.argv[1], "w"), indent=1)
