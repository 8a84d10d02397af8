#!/usr/bin/env bash
# Session 5, call C (nvidia-h100-x1), tree of fd3b67f + the 64-row skinny GEMM before the small-weight table.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/tmp/site:$PWD/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
CFG=benchmarks/model-configs/qwen3-0.6b
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py -x
for mm in 16 64; do
  INFERD_SKINNY_MAX_M=$mm timeout 100 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 24 32 48 64 --output-json $R/lat_m$mm.json
  INFERD_SKINNY_MAX_M=$mm timeout 90 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_m$mm.json
done
python3 benchmarks/gemv_bench.py --m 16 24 32 48 64 --sweep --sweep-models qwen3-0.6b --sweep-seconds 295 --no-fused --output-json $R/gemv.json
