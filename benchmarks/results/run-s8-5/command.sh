#!/usr/bin/env bash
# Session 8, call 5 (nvidia-h100-x2): commit 4347172; DP 1 vs DP 2 on the nano-vllm workload, TP 2 GPU tests.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
run() { timeout 120 python3 -m inferd bench throughput $CFG "${COMMON[@]}" -dp $1 --output-json $R/thr_dp$1_$2.json > $R/thr_dp$1_$2.log 2>&1
  grep "throughput:" $R/thr_dp$1_$2.log | sed "s/^/dp=$1 run $2: /" | tee -a $R/summary.txt; }
run 2 0; run 1 1; run 2 1; run 1 2; run 2 2; pack
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/gpu/test_tp_gpu.py tests/unit/test_custom_all_reduce.py > $R/tests.txt 2>&1; tail -2 $R/tests.txt | tee -a $R/summary.txt
pack
