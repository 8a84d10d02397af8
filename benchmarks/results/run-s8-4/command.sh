#!/usr/bin/env bash
# Session 8, call 4 (nvidia-h100-x1, fresh machine): the tree as landed (ab_new/src: pre-norm fused into the one-row
# GEMV, tiled q/k prologue for prefill) against base = 84c0e47 (ab_base/src): cold start, latency and throughput
# interleaved, GPU tests (fused GEMV, q/k prologue, greedy == HF and bf16 chunked prefill, kernel warm-up).
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/ab_new/src; BASE=/tmp/site:$PWD/ab_base/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
s=$(date +%s); t() { echo "  [$(( $(date +%s) - s )) s]" >> $R/summary.txt; }
port=$(python3 -c "import socket; x=socket.socket(); x.bind(('127.0.0.1', 0)); print(x.getsockname()[1])")
start=$(date +%s.%N)
PYTHONPATH=$NEW python3 -m inferd serve $CFG "${COMMON[@]}" --port $port --host 127.0.0.1 > $R/serve_fresh.log 2>&1 &
pid=$!
for _ in $(seq 1 900); do curl -sf http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 0.1; done
echo "fresh (new): cold start to ready $(python3 -c "import time; print(round(time.time() - $start, 1))") s" >> $R/summary.txt
kill -TERM $pid; wait $pid; t
lat() { PYTHONPATH=$2 timeout 70 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 64 --output-json $R/lat_$1.json > $R/lat_$1.log 2>&1; echo "$1 $(grep 'latency:' $R/lat_$1.log)" >> $R/summary.txt; t; }
thr() { PYTHONPATH=$2 timeout 80 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$1.json > $R/thr_$1.log 2>&1; echo "$1 $(grep 'throughput:' $R/thr_$1.log)" >> $R/summary.txt; t; }
lat new1 $NEW; lat base1 $BASE; lat new2 $NEW; lat base2 $BASE; pack
thr new1 $NEW; thr base1 $BASE; thr new2 $NEW; thr base2 $BASE; thr new3 $NEW; thr base3 $BASE; pack
export PYTHONPATH=$NEW
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py -k norm > $R/tests_gemv.txt 2>&1; tail -1 $R/tests_gemv.txt >> $R/summary.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_fused_qk.py tests/gpu/test_gpu_engine.py tests/gpu/test_kernel_warmup_gpu.py > $R/tests.txt 2>&1; tail -1 $R/tests.txt >> $R/summary.txt; t; pack
cat $R/summary.txt
