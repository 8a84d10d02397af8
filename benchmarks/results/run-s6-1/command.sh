#!/usr/bin/env bash
# Session 6, call 1 (nvidia-h100-x1, fresh machine): tree of 724a21c.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > $R/env.txt
cold() {  # launch serve, poll /health every 0.1 s
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  start=$(date +%s.%N)
  python3 -m inferd serve $CFG "${COMMON[@]}" --port $port --host 127.0.0.1 > $R/serve_$1.log 2>&1 &
  pid=$!
  for _ in $(seq 1 900); do curl -sf http://127.0.0.1:$port/health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$1: cold start to ready $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee -a $R/summary.txt
  kill -TERM $pid; wait $pid
}
cold fresh; cold second
timeout 150 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 32 64 --output-json $R/lat.json > $R/lat.log 2>&1
grep "latency:" $R/lat.log >> $R/summary.txt
for i in 1 2; do timeout 90 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr$i.json > $R/thr$i.log 2>&1; grep "throughput:" $R/thr$i.log >> $R/summary.txt; done
INFERD_PDL=0 timeout 100 python3 benchmarks/graph_profile.py $CFG --batch 1 --context 128 --rounds 3 --output-json $R/gprof_b1.json > $R/gprof_b1.txt 2>&1
INFERD_PDL=0 timeout 100 python3 benchmarks/graph_profile.py $CFG --batch 64 --context 512 --rounds 3 --output-json $R/gprof_b64.json > $R/gprof_b64.txt 2>&1
tar czf $OUT/r.tgz -C $OUT r
timeout 120 python3 benchmarks/hf_peer.py latency $CFG --output-len 128 --num-iters 3 2>&1 | tail -1 > $R/hf_latency.json
tar czf $OUT/r.tgz -C $OUT r
timeout 280 python3 benchmarks/hf_peer.py throughput $CFG --num-prompts 256 > $R/hf_thr.log 2>&1; tail -1 $R/hf_thr.log > $R/hf_throughput.json
tar czf $OUT/r.tgz -C $OUT r
