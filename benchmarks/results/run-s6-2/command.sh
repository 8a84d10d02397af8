#!/usr/bin/env bash
# Session 6, call 2 (nvidia-h100-x1, fresh machine): working tree (L2 prefetch in the norm kernel, warm-up timings).
# The tree it ran: 724a21c plus tree.diff (the L2 prefetch was not landed; the warm-up timings were, in e573682).
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > $R/env.txt
cold() {
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  start=$(date +%s.%N)
  INFERD_KERNEL_WARMUP=debug python3 -m inferd serve $CFG "${COMMON[@]}" --port $port --host 127.0.0.1 > $R/serve_$1.log 2>&1 &
  pid=$!
  for _ in $(seq 1 900); do curl -sf http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$1: cold start to ready $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee -a $R/summary.txt
  kill -TERM $pid; wait $pid
}
cold fresh
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_prefetch.py tests/kernels/test_pdl.py tests/gpu/test_gpu_engine.py > $R/tests.txt 2>&1; tail -2 $R/tests.txt >> $R/summary.txt
for m in 0 bulk line 0 bulk; do
  INFERD_L2_PREFETCH=$m timeout 120 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 --output-json $R/lat_$m.json > $R/lat_$m.log 2>&1
  grep "latency:" $R/lat_$m.log | sed "s/^/pf=$m /" >> $R/summary.txt
done
tar czf $OUT/r.tgz -C $OUT r
for m in 0 bulk; do
  INFERD_L2_PREFETCH=$m timeout 90 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$m.json > $R/thr_$m.log 2>&1
  grep "throughput:" $R/thr_$m.log | sed "s/^/pf=$m /" >> $R/summary.txt
done
INFERD_PDL=0 timeout 100 python3 benchmarks/graph_profile.py $CFG --batch 1 --context 128 --rounds 3 --output-json $R/gprof_b1_pf.json > $R/gprof_b1_pf.txt 2>&1
tar czf $OUT/r.tgz -C $OUT r
