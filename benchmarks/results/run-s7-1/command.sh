#!/usr/bin/env bash
# Session 7, call 1 (nvidia-h100-x1): working tree on top of f3d8a50 (base = f3d8a50's src/, git archive).
R=$OUT/r; mkdir -p $R; S=benchmarks/results/run-s7-1; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
timeout 100 python3 $S/gpu_m1.py $R/m1.json > $R/m1.txt 2>&1; grep "^K=" $R/m1.txt | cut -c1-200
timeout 100 python3 $S/attn_order.py > $R/attn.txt 2>&1; grep -v Warn $R/attn.txt | cut -c1-160; pack
B="env PYTHONPATH=/tmp/site:$PWD/ab_base/src python3 -m inferd"; N="python3 -m inferd"
lat() { timeout 100 $2 bench latency $CFG "${COMMON[@]}" --batch-size $3 > $R/lat_$1.log 2>&1; grep -E "patched|latency:" $R/lat_$1.log | sed "s/^/$1 /" | tee -a $R/summary.txt; }
lat base "$B" "1 8 16 32 64"; lat new "$N" "1 8 16 32 64"
lat m1best "python3 $S/gpu_m1_lat.py $R/m1.json" 1
lat nohf "python3 $S/gpu_set.py inferd.kernels.triton_attention.DECODE_HEADS_FIRST=False --" "16 64"
pack
for i in 1 2; do for t in base new; do
  cmd=$N; [[ $t == base ]] && cmd=$B
  timeout 80 $cmd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$t$i.json > $R/thr_$t$i.log 2>&1
  grep "throughput:" $R/thr_$t$i.log | sed "s/^/$t /" | tee -a $R/summary.txt
done; done; pack
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/kernels/test_sampling_kernel.py tests/kernels/test_decode_advance.py tests/kernels/test_gemv.py tests/gpu/test_gpu_engine.py tests/kernels/test_triton_kernels.py > $R/tests.txt 2>&1; tail -3 $R/tests.txt | tee -a $R/summary.txt
pack
