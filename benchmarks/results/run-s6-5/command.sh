#!/usr/bin/env bash
# Session 6, call 5 (nvidia-h100-x2, fresh machine): commit e573682, DP 1 vs DP 2 on the nano-vllm workload.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
for dp in 1 2; do
  timeout 140 python3 -m inferd bench throughput $CFG "${COMMON[@]}" -dp $dp --output-json $R/thr_dp$dp.json > $R/thr_dp$dp.log 2>&1
  grep "throughput:" $R/thr_dp$dp.log | sed "s/^/dp=$dp /" >> $R/summary.txt
done
tar czf $OUT/r.tgz -C $OUT r
