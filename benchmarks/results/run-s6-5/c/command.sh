#!/usr/bin/env bash
# Session 6, call 5c (same nvidia-h100-x2 machine, warm): DP 1 then DP 2 with e573682, repeated.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
for dp in 1 2 1; do
  timeout 100 python3 -m inferd bench throughput $CFG "${COMMON[@]}" -dp $dp > $R/thr_dp$dp.log 2>&1
  grep "throughput:" $R/thr_dp$dp.log | sed "s/^/dp=$dp /" >> $R/summary.txt
done
