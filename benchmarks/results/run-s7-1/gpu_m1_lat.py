"""Session 7, call 1: `inferd ...` with the one-row skinny-GEMM picks replaced by gpu_m1.py's best (argv[1])."""
import json
import sys

import torch

from inferd.kernels import triton_gemv
from inferd.kernels.triton_gemv import GemvConfig

found = json.load(open(sys.argv[1]))
best = {tuple(map(int, k.split("x"))): GemvConfig(**v["best"]) for k, v in found.items()
        if v["best_us"] < v["table_us"] - 0.1 and v["err"] < 1e-2}
print("patched M=1 picks:", {k: v.describe(k[1]) for k, v in best.items()}, flush=True)
orig = triton_gemv.pick_config


def patched(M, N, K, dtype, sms):
    if M == 1 and dtype == torch.bfloat16 and (N, K) in best:
        return best[(N, K)]
    return orig(M, N, K, dtype, sms)


triton_gemv.pick_config = patched
from inferd.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
