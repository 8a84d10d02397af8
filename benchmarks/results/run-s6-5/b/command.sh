#!/usr/bin/env bash
# Session 6, call 5b (same nvidia-h100-x2 machine, warm): DP 2 alternating new (e573682) and base (724a21c src).
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
for t in new base new base; do
  P=/tmp/site:$PWD/src; [[ $t == base ]] && P=/tmp/site:$PWD/ab_base/src
  PYTHONPATH=$P timeout 100 python3 -m inferd bench throughput $CFG "${COMMON[@]}" -dp 2 > $R/thr_dp2_$t.log 2>&1
  grep "throughput:" $R/thr_dp2_$t.log | sed "s/^/dp=2 $t /" >> $R/summary.txt
done
