#!/usr/bin/env bash
# Session 7, call 3 (nvidia-h100-x1): working tree (decode attention starts the longest contexts first: seq_order);
# "noorder" = the same tree with the attention layer passing no seq_order (sed below).
R=$OUT/r; mkdir -p $R; S=benchmarks/results/run-s7-3; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
mkdir -p /tmp/noorder && cp -r src /tmp/noorder/ && sed -i 's/attn_metadata.seq_order,/None,/' /tmp/noorder/src/inferd/layers/attention.py
grep -c "None,$" /tmp/noorder/src/inferd/layers/attention.py >> $R/env.txt
timeout 120 python3 $S/attn_lpt.py > $R/attn_lpt.txt 2>&1; grep -v Warn $R/attn_lpt.txt; pack
B="env PYTHONPATH=/tmp/site:/tmp/noorder/src python3 -m inferd"; N="python3 -m inferd"
lat() { timeout 90 $2 bench latency $CFG "${COMMON[@]}" --batch-size $3 --output-json $R/lat_$1.json > $R/lat_$1.log 2>&1; grep -E "latency:" $R/lat_$1.log | sed "s/^/$1 /" | tee -a $R/summary.txt; }
thr() { timeout 80 $2 bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$1.json > $R/thr_$1.log 2>&1; grep "throughput:" $R/thr_$1.log | sed "s/^/$1 /" | tee -a $R/summary.txt; }
for i in 1 2 3; do thr new$i "$N"; thr noorder$i "$B"; done; pack
lat new "$N" "1 8 32 64"; lat noorder "$B" "1 8 32 64"; pack
timeout 100 python3 benchmarks/graph_profile.py $CFG --batch 64 --context 512 --rounds 3 --output-json $R/gprof_b64.json > $R/gprof_b64.txt 2>&1; pack
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/kernels/test_triton_kernels.py tests/kernels/test_sampling_kernel.py tests/kernels/test_decode_advance.py tests/gpu/test_gpu_engine.py > $R/tests.txt 2>&1; tail -2 $R/tests.txt | tee -a $R/summary.txt
pack
