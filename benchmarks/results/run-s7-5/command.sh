#!/usr/bin/env bash
# Session 7, call 5 (nvidia-h100-x1, fresh machine): commit f34ec0a; cold starts, final latency / throughput, HF
# peer latency, GPU tests (kernel warm-up, PDL, skinny GEMM).
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
cold() {
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  start=$(date +%s.%N)
  python3 -m inferd serve $CFG "${COMMON[@]}" --port $port --host 127.0.0.1 > $R/serve_$1.log 2>&1 &
  pid=$!
  for _ in $(seq 1 900); do curl -sf http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$1: cold start to ready $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee -a $R/summary.txt
  kill -TERM $pid; wait $pid
}
cold fresh; rm -rf ~/.triton/cache; cold tritoncold; pack
for i in 1 2; do
  timeout 100 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 32 64 --output-json $R/lat$i.json > $R/lat$i.log 2>&1
  grep "latency:" $R/lat$i.log | tee -a $R/summary.txt
  timeout 80 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr$i.json > $R/thr$i.log 2>&1
  grep "throughput:" $R/thr$i.log | tee -a $R/summary.txt
done; pack
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/gpu/test_kernel_warmup_gpu.py tests/kernels/test_pdl.py tests/kernels/test_gemv.py > $R/tests.txt 2>&1; tail -2 $R/tests.txt | tee -a $R/summary.txt; pack
timeout 100 python3 benchmarks/hf_peer.py latency $CFG --output-len 128 --num-iters 3 2>&1 | tail -1 > $R/hf_latency.json; cat $R/hf_latency.json; pack
