#!/usr/bin/env bash
# Session 8, call 1 (nvidia-h100-x1): commit 84c0e47 + benchmarks/timeline_profile.py; where the GPU time of the
# throughput workload goes (per launch kind: busy / idle / kernels), a graph profile at batch 1, baseline figures.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
s=$(date +%s)
t() { echo "$(( $(date +%s) - s )) s"; }
timeout 80 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr1.json > $R/thr1.log 2>&1
grep "throughput:" $R/thr1.log | tee -a $R/summary.txt; t | tee -a $R/summary.txt
timeout 150 python3 benchmarks/timeline_profile.py $CFG --output-json $R/timeline.json > $R/timeline.log 2>&1
tail -5 $R/timeline.log | tee -a $R/summary.txt; t | tee -a $R/summary.txt; pack
timeout 90 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 64 --output-json $R/lat1.json > $R/lat1.log 2>&1
grep "latency:" $R/lat1.log | tee -a $R/summary.txt; t | tee -a $R/summary.txt; pack
timeout 90 python3 benchmarks/graph_profile.py $CFG --batch 1 --context 200 --output-json $R/gprof_b1.json > $R/gprof_b1.txt 2>&1
t | tee -a $R/summary.txt; pack
