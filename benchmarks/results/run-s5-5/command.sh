#!/usr/bin/env bash
# Session 5, call E (nvidia-h100-x1, fresh machine). NEW = the tree of 2010f59, BASE = git archive 6c01b91 src.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
NEW=/tmp/site:$PWD/src; BASE=/tmp/site:$PWD/ab_base/src
COMMON=(--load-format dummy --dtype bfloat16 --max-model-len 4096)
CFG=benchmarks/model-configs/qwen3-0.6b
# cold start: launch `inferd serve`, poll /health every 0.1 s, report the time to the first 200
PYTHONPATH=$NEW python3 -m inferd serve $CFG "${COMMON[@]}" --port "$port" --host 127.0.0.1 > $R/serve_fresh.log 2>&1 &
PYTHONPATH=$NEW timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_gemv.py
for tree in new base new base; do
  P=$NEW; [[ $tree == base ]] && P=$BASE
  PYTHONPATH=$P timeout 90 python3 -m inferd bench throughput $CFG "${COMMON[@]}"
done
