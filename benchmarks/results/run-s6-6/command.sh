#!/usr/bin/env bash
# Session 6, call 6 (nvidia-h100-x1, fresh machine): commit e573682; M=1 GEMV sweep, then batch-1 latency A/B.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh gpu_m1.py gpu_m1_lat.py $R/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > $R/env.txt
timeout 150 python3 gpu_m1.py $R/m1.json > $R/m1.txt 2>&1; grep -v Warn $R/m1.txt | tail -8
for t in base new base new; do
  run=(python3 -m inferd); [[ $t == new ]] && run=(python3 gpu_m1_lat.py $R/m1.json)
  timeout 60 "${run[@]}" bench latency $CFG "${COMMON[@]}" --batch-size 1 > $R/lat_$t.log 2>&1
  grep -E "patched|latency:" $R/lat_$t.log | sed "s/^/$t /" | tee -a $R/summary.txt
done
