#!/usr/bin/env bash
# Session 7, call 2 (nvidia-h100-x1): working tree (s7-1's + latency bench warms up its 1-token runs too); base =
# f3d8a50's src/. A/Bs through benchmarks/results/run-s7-1/gpu_set.py (module attributes set before `inferd ...`).
R=$OUT/r; mkdir -p $R; S=benchmarks/results/run-s7-1; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
B="env PYTHONPATH=/tmp/site:$PWD/ab_base/src python3 -m inferd"; N="python3 -m inferd"; SET="python3 $S/gpu_set.py"
lat() { timeout 90 $2 bench latency $CFG "${COMMON[@]}" --batch-size $3 --output-json $R/lat_$1.json > $R/lat_$1.log 2>&1; grep -E "latency:" $R/lat_$1.log | sed "s/^/$1 /" | tee -a $R/summary.txt; }
thr() { timeout 80 $2 bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$1.json > $R/thr_$1.log 2>&1; grep "throughput:" $R/thr_$1.log | sed "s/^/$1 /" | tee -a $R/summary.txt; }
thr new1 "$N"
thr pdl256 "$SET inferd.kernels.pdl.MAX_GRAPH_BATCH=256 --"
thr pdl64 "$SET inferd.kernels.pdl.MAX_GRAPH_BATCH=64 --"
thr nohf "$SET inferd.kernels.triton_attention.DECODE_HEADS_FIRST=False --"
thr new2 "$N"; pack
lat new1 "$N" "1 32 64"
lat pdl256 "$SET inferd.kernels.pdl.MAX_GRAPH_BATCH=256 --" "32 64"
lat noshort "$SET inferd.worker.cuda_graph.SHORT_CONTEXT_MAX_BATCH=0 --" 1
lat nopre "$SET inferd.kernels.triton_gemv.PRELOAD_ONE_BLOCK=False --" 1
lat base "$B" 1
lat new2 "$N" 1; pack
