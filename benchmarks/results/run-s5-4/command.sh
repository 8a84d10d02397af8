#!/usr/bin/env bash
# Session 5, call D (nvidia-h100-x1). NEW = the tree of e0bf38d (before its test fix), BASE = git archive 6c01b91 src.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/src; BASE=/tmp/site:$PWD/ab_base/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
CFG=benchmarks/model-configs/qwen3-0.6b
PYTHONPATH=$NEW timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py tests/gpu/test_gpu_engine.py
for tree in new base new2; do  # latency for all three, throughput for new and base
  P=$NEW; [[ $tree == base ]] && P=$BASE
  PYTHONPATH=$P python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 32 --output-json $R/lat_$tree.json
  [[ $tree == new2 ]] && break
  PYTHONPATH=$P python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$tree.json
done
