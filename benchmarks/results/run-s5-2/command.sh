#!/usr/bin/env bash
# Session 5, call B (nvidia-h100-x2). NEW = the tree of fd3b67f (epoch-flag fused kernel), BASE = git archive 6c01b91 src.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/src; BASE=/tmp/site:$PWD/ab_base/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
L8=benchmarks/model-configs/llama-3.1-8b
PYTHONPATH=$NEW timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_custom_all_reduce.py -x
lat() { PYTHONPATH=$1 timeout 150 python3 -m inferd bench latency $L8 "${COMMON[@]}" -tp $2 --batch-size 1 8 --num-iters 5 --output-json $R/lat_l8_$3.json; }
lat $NEW 2 tp2_new; lat $BASE 2 tp2_base; lat $NEW 1 tp1_new; lat $NEW 2 tp2_new_again
PYTHONPATH=$NEW timeout 100 python3 -m inferd bench throughput $L8 "${COMMON[@]}" -tp 2 --output-json $R/thr_l8_tp2.json
PYTHONPATH=$NEW timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_tp_gpu.py
