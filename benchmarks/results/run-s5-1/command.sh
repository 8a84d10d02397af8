#!/usr/bin/env bash
# Session 5, call A (nvidia-h100-x2). NEW = the working tree (first version of the fused kernel), BASE = git archive 6c01b91 src.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/src; BASE=/tmp/site:$PWD/ab_base/src
R=$OUT/r; mkdir -p $R
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
L8=benchmarks/model-configs/llama-3.1-8b
PYTHONPATH=$NEW timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_custom_all_reduce.py -x
lat() { PYTHONPATH=$1 timeout 150 python3 -m inferd bench latency $L8 "${COMMON[@]}" -tp $2 --batch-size 1 --num-iters 3 --output-json $R/lat_l8_$3.json; }
lat $NEW 2 tp2_new; lat $BASE 2 tp2_base; lat $NEW 1 tp1_new
for dp in 1 2; do
  PYTHONPATH=$NEW timeout 100 python3 -m inferd bench throughput benchmarks/model-configs/qwen3-0.6b "${COMMON[@]}" -dp $dp --output-json $R/thr_dp$dp.json
done
PYTHONPATH=$NEW timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_tp_gpu.py
