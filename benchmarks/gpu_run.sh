#!/usr/bin/env bash
# Everything inferd does on a GPU box in one go: GPU tests, benchmarks, and the HF transformers peer.
# Results land in $OUT (default ./gpu-results). Run from the repository root:
#   ../shared/device/stage-wheels.sh   # (here) stage the server wheels the GPU image lacks into .whl/
#   bash benchmarks/gpu_run.sh [tests|bench|big|peer|gemv|skinny-ab|pdl-ab|async-ab|warmup-ab|profile|tp|dp|all]
#   (tp and dp need two GPUs; pdl-ab, async-ab, warmup-ab and profile are not part of all)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODE=${1:-all}
CFG=benchmarks/model-configs/qwen3-0.6b
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
{
  date -u +%Y-%m-%dT%H:%MZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/env.txt"

if [[ $MODE == tests || $MODE == all ]]; then
  timeout 420 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu tests/kernels tests/unit/test_models.py \
    tests/unit/test_sampler.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -3
  # The server end to end on the GPU (grammars, tools, streaming) with a tiny random model.
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/e2e/test_tools_and_structured.py \
    tests/e2e/test_server.py tests/e2e/test_async_scheduling.py 2>&1 | tee "$OUT/gpu_e2e.log" | tail -3
fi
if [[ $MODE == bench || $MODE == all ]]; then
  timeout 240 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 32 \
    --output-json "$OUT/latency.json" 2>&1 | tee "$OUT/latency.log" | grep -E "latency:|CUDA graphs|KV cache|Error|error" 
  timeout 300 python3 -m inferd bench throughput $CFG "${COMMON[@]}" \
    --output-json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log" | grep -E "throughput:|Error|error"
  # Cold start of `inferd serve` to a ready /health (dummy weights, graphs captured).
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  start=$(date +%s.%N)
  python3 -m inferd serve $CFG "${COMMON[@]}" --port "$port" --host 127.0.0.1 >"$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "cold start to ready: $(python3 -c "import time; print(round(time.time() - $start, 1))") s" | tee "$OUT/coldstart.txt"
  timeout 120 python3 -m inferd bench serve --base-url "http://127.0.0.1:$port" --num-prompts 64 --max-concurrency 32 \
    --input-len 256 --output-len 128 --output-json "$OUT/serve_bench.json" 2>&1 | tail -1
  kill -TERM $pid; wait $pid
fi
if [[ $MODE == big || $MODE == all ]]; then
  for m in qwen3-8b llama-3.1-8b; do
    timeout 200 python3 -m inferd bench latency benchmarks/model-configs/$m "${COMMON[@]}" --batch-size 1 \
      --num-iters 3 --output-json "$OUT/latency_$m.json" 2>&1 | grep -E "latency:|Error"
  done
fi
if [[ $MODE == peer || $MODE == all ]]; then
  timeout 200 python3 benchmarks/hf_peer.py latency $CFG 2>&1 | tail -1 | tee "$OUT/hf_latency.json"
  timeout 300 python3 benchmarks/hf_peer.py throughput $CFG --num-prompts 64 2>&1 | tail -1 | tee "$OUT/hf_throughput.json"
fi
if [[ $MODE == skinny-ab ]]; then  # batch-1/8 latency with the skinny-GEMM kernel off, then on
  for sk in 0 1; do
    INFERD_SKINNY_GEMM=$sk timeout 200 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 32 \
      --output-json "$OUT/latency_skinny$sk.json" 2>&1 | tee "$OUT/latency_skinny$sk.log" | grep -E "latency:|Error|error"
  done
fi
if [[ $MODE == pdl-ab ]]; then  # programmatic dependent launch off / on (on: decode graphs of <= 8 sequences)
  for p in 0 1; do
    INFERD_PDL=$p timeout 200 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 32 \
      --output-json "$OUT/latency_pdl$p.json" 2>&1 | grep -E "latency:|Error|error" | sed "s/^/pdl=$p /"
    INFERD_PDL=$p timeout 300 python3 -m inferd bench throughput $CFG "${COMMON[@]}" \
      --output-json "$OUT/throughput_pdl$p.json" 2>&1 | grep -E "throughput:|Error|error" | sed "s/^/pdl=$p /"
  done
fi
if [[ $MODE == async-ab ]]; then  # asynchronous scheduling off / on (latency at batch 1, 8, 64; throughput)
  for a in no-async-scheduling async-scheduling; do
    timeout 200 python3 -m inferd bench latency $CFG "${COMMON[@]}" --$a --batch-size 1 8 64 \
      --output-json "$OUT/latency_$a.json" 2>&1 | grep -E "latency:|Error|error" | sed "s/^/$a /"
    timeout 300 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --$a \
      --output-json "$OUT/throughput_$a.json" 2>&1 | grep -E "throughput:|Error|error" | sed "s/^/$a /"
  done
fi
if [[ $MODE == warmup-ab ]]; then  # cold start with an empty Triton cache, kernel warm-up processes off / on
  for w in 0 1; do
    rm -rf "${TRITON_CACHE_DIR:-$HOME/.triton/cache}"
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    start=$(date +%s.%N)
    INFERD_KERNEL_WARMUP=$w python3 -m inferd serve $CFG "${COMMON[@]}" --port "$port" --host 127.0.0.1 \
      >"$OUT/serve_warmup$w.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "warm-up=$w: cold start to ready $(python3 -c "import time; print(round(time.time() - $start, 1))") s" \
      | tee -a "$OUT/coldstart_warmup_ab.txt"
    kill -TERM $pid; wait $pid
  done
fi
if [[ $MODE == profile ]]; then  # GPU time per kernel as the decode steps really run; attention tile sweep
  for b in 1 256; do
    timeout 200 python3 benchmarks/graph_profile.py $CFG --batch $b --context $((b == 1 ? 128 : 800)) --rounds 3 \
      --output-json "$OUT/graph_profile_b$b.json" > "$OUT/graph_profile_b$b.txt" 2>&1
  done
  timeout 200 python3 benchmarks/attn_sweep.py --budget-s 120 --output-json "$OUT/attn_sweep.json" > "$OUT/attn_sweep.txt" 2>&1
fi
if [[ $MODE == gemv || $MODE == all ]]; then
  timeout 120 python3 benchmarks/gemv_bench.py --output-json "$OUT/gemv.json" 2>&1 | tee "$OUT/gemv.log" | tail -30
fi
if [[ $MODE == tp || $MODE == all ]] && (( $(nvidia-smi -L | wc -l) >= 2 )); then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_tp_gpu.py tests/unit/test_custom_all_reduce.py \
    2>&1 | tee "$OUT/tp_tests.log" | tail -3
  L8=benchmarks/model-configs/llama-3.1-8b
  for tp in 1 2; do
    timeout 240 python3 -m inferd bench latency $L8 "${COMMON[@]}" -tp $tp --batch-size 1 --num-iters 3 \
      --output-json "$OUT/latency_llama8b_tp$tp.json" 2>&1 | tee "$OUT/latency_llama8b_tp$tp.log" | grep -E "latency:|Error|error"
  done
  timeout 300 python3 -m inferd bench throughput $L8 "${COMMON[@]}" -tp 2 \
    --output-json "$OUT/throughput_llama8b_tp2.json" 2>&1 | grep -E "throughput:|Error|error"
fi
if [[ $MODE == dp || $MODE == all ]] && (( $(nvidia-smi -L | wc -l) >= 2 )); then
  for dp in 1 2; do
    timeout 300 python3 -m inferd bench throughput $CFG "${COMMON[@]}" -dp $dp \
      --output-json "$OUT/throughput_dp$dp.json" 2>&1 | grep -E "throughput:|Error|error"
  done
fi
