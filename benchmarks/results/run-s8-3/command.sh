#!/usr/bin/env bash
# Session 8, call 3 (nvidia-h100-x1): base = 84c0e47 (ab_base/src) vs the new tree (ab_new/src): pre-norm fused
# into the skinny GEMV (residual stored after the loop), q/k prologue inside the decode attention launch, tiled
# q/k prologue for prefill. Microbenchmarks (q/k prologue, prefill attention configs), latency A/B incl.
# NORM_MAX_M=1 and FUSED_DECODE_PROLOGUE=False variants, throughput incl. TORCH_BLAS_PREFER_CUBLASLT=1, the
# timeline with host profile, GPU tests.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/ab_new/src; BASE=/tmp/site:$PWD/ab_base/src; SET=ab_new/bench/gpu_set.py
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
s=$(date +%s); t() { echo "  [$(( $(date +%s) - s )) s]" >> $R/summary.txt; }
LB=(--batch-size 1 8 16 64)
lat() { n=$1; p=$2; shift 2; PYTHONPATH=$p timeout 70 python3 "$@" latency $CFG "${COMMON[@]}" "${LB[@]}" --output-json $R/lat_$n.json > $R/lat_$n.log 2>&1; echo "$n $(grep 'latency:' $R/lat_$n.log)" >> $R/summary.txt; t; }
thr() { n=$1; p=$2; shift 2; PYTHONPATH=$p timeout 80 "$@" throughput $CFG "${COMMON[@]}" --output-json $R/thr_$n.json > $R/thr_$n.log 2>&1; echo "$n $(grep 'throughput:' $R/thr_$n.log)" >> $R/summary.txt; t; }
PYTHONPATH=$NEW timeout 90 python3 benchmarks/qk_prologue_bench.py --tile-elems 2048 4096 8192 > $R/qk_bench.txt 2>&1; t
PYTHONPATH=$NEW timeout 150 python3 benchmarks/prefill_attn_sweep.py --output-json $R/prefill_sweep.json > $R/prefill_sweep.txt 2>&1; t; pack
lat base1 $BASE -m inferd bench; lat new1 $NEW -m inferd bench
lat new_norm1only $NEW $SET inferd.kernels.triton_gemv.NORM_MAX_M=1 -- bench
lat new_noprologue $NEW $SET inferd.kernels.triton_attention.FUSED_DECODE_PROLOGUE=False -- bench
lat base2 $BASE -m inferd bench; lat new2 $NEW -m inferd bench; pack
thr new1 $NEW python3 -m inferd bench; thr base1 $BASE python3 -m inferd bench
thr new_cublaslt $NEW env TORCH_BLAS_PREFER_CUBLASLT=1 python3 -m inferd bench; thr new2 $NEW python3 -m inferd bench; pack
PYTHONPATH=$NEW timeout 160 python3 benchmarks/timeline_profile.py $CFG --host-profile --output-json $R/timeline.json > $R/timeline.log 2>&1; t; pack
export PYTHONPATH=$NEW
timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py -k norm > $R/tests_gemv.txt 2>&1; tail -1 $R/tests_gemv.txt >> $R/summary.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_fused_attention_prologue.py tests/kernels/test_fused_qk.py tests/gpu/test_gpu_engine.py tests/gpu/test_kernel_warmup_gpu.py > $R/tests.txt 2>&1; tail -1 $R/tests.txt >> $R/summary.txt; t; pack
cat $R/summary.txt
