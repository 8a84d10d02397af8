"""Session 6, call 6: sweep M=1 skinny-GEMM configs (FMA path, with PDL, in CUDA graphs) on Qwen3-0.6B shapes."""
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
bases = [(16, 512, 8, 3), (8, 512, 4, 3), (8, 1024, 8, 2), (4, 512, 4, 3), (4, 1024, 4, 2), (32, 256, 8, 3),
         (16, 1024, 8, 2), (8, 256, 4, 3), (16, 256, 4, 3), (32, 512, 8, 2), (2, 1024, 2, 2), (4, 2048, 8, 1)]
results = {}
for K, N in [(1024, 4096), (2048, 1024), (1024, 6144), (3072, 1024)]:
    ws = make_weights(K, N, 20, 256 * 2**20)
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    table = pick_config(1, N, K, torch.bfloat16, sms)
    cands = [table]
    for b in bases:
        c = GemvConfig(False, *b)
        cands += [fit_config(c, N, K, sms, p) for p in (1, 2, 4)] + [replace(fit_config(c, N, K, sms, 1), k_split=0)]
    cands = list(dict.fromkeys(cands))
    timed = []
    with pdl.active():
        for c in cands:
            try:
                out = triton_gemv.launch(x, ws[0], None, c).float()
                ref = F.linear(x.float(), ws[0].float())
                err = ((out - ref).norm() / ref.norm()).item()
                us = graph_us(lambda a, w, c=c: triton_gemv.launch(a, w, None, c), x, ws, 20, 10)
                timed.append((us, err, c))
            except Exception as e:
                print(f"K={K} N={N} {c}: {type(e).__name__}: {str(e)[:150]}")
    t_table = next(t for t in timed if t[2] == table)
    timed.sort(key=lambda t: t[0])
    best = timed[0]
    print(f"K={K} N={N}: table {t_table[0]:.2f} us ({table.describe(K)}), best {best[0]:.2f} us "
          f"({best[2].describe(K)} k_split={best[2].k_split}, err {best[1]:.1e}); next: "
          + "; ".join(f"{u:.2f} {c.describe(K)}" for u, _, c in timed[1:5]), flush=True)
    results[f"{N}x{K}"] = {"table_us": t_table[0], "table": asdict(table), "best_us": best[0], "best": asdict(best[2]),
                           "err": best[1], "all": [{"us": u, "err": e, **asdict(c)} for u, e, c in timed]}
json.dump(results, open(sys.argv[1], "w"), indent=1)
