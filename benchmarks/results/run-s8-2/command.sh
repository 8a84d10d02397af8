#!/usr/bin/env bash
# Session 8, call 2 (nvidia-h100-x1): the pre-norm fused into the skinny GEMV (kernels.add_rms_norm_linear) against
# base = 84c0e47 (a copy of its src/ in ab_base/; the new tree copied to ab_new/ while helpers edit src/), latency batch 1/8/16 interleaved, throughput; the timeline profile
# with the host profile of the prefill-carrying steps; GPU tests of the fused GEMV, greedy == HF, kernel warm-up.
R=$OUT/r; mkdir -p $R; cp gpu_call.sh $R/command.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/ab_new/src; BASE=/tmp/site:$PWD/ab_base/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096); CFG=benchmarks/model-configs/qwen3-0.6b
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } > $R/env.txt
pack() { tar czf $OUT/r.tgz -C $OUT r; }
s=$(date +%s); t() { echo "  [$(( $(date +%s) - s )) s]" >> $R/summary.txt; }
lat() { PYTHONPATH=$2 timeout 70 python3 -m inferd bench latency $CFG "${COMMON[@]}" --batch-size 1 8 16 --output-json $R/lat_$1.json > $R/lat_$1.log 2>&1; echo "$1 $(grep 'latency:' $R/lat_$1.log)" >> $R/summary.txt; t; }
thr() { PYTHONPATH=$2 timeout 80 python3 -m inferd bench throughput $CFG "${COMMON[@]}" --output-json $R/thr_$1.json > $R/thr_$1.log 2>&1; echo "$1 $(grep 'throughput:' $R/thr_$1.log)" >> $R/summary.txt; t; }
lat base1 $BASE; lat new1 $NEW; lat base2 $BASE; lat new2 $NEW; pack
thr new1 $NEW; thr base1 $BASE; pack
PYTHONPATH=$NEW timeout 150 python3 benchmarks/timeline_profile.py $CFG --host-profile --output-json $R/timeline.json > $R/timeline.log 2>&1; t; pack
PYTHONPATH=$NEW timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py -k norm tests/gpu/test_gpu_engine.py tests/gpu/test_kernel_warmup_gpu.py > $R/tests.txt 2>&1; tail -3 $R/tests.txt >> $R/summary.txt; t; pack
cat $R/summary.txt
