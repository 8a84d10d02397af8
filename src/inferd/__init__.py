"""inferd: a fast, OpenAI-compatible LLM inference server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferd.outputs import CompletionOutput, Logprob, RequestOutput
from inferd.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.1.0"

if TYPE_CHECKING:
    from inferd.config import EngineArgs
    from inferd.llm import LLM

__all__ = [
    "LLM",
    "CompletionOutput",
    "EngineArgs",
    "Logprob",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Import the engine lazily so `import inferd` (and the CLI's --help) stays fast.
    if name == "LLM":
        from inferd.llm import LLM

        return LLM
    if name == "EngineArgs":
        from inferd.config import EngineArgs

        return EngineArgs
    raise AttributeError(f"module 'inferd' has no attribute {name!r}")
