"""Structured outputs: JSON schemas, regexes, choices and grammars enforced as token bitmasks with xgrammar.

``grammar`` (constraint → xgrammar grammar; imported by SamplingParams validation, so it stays light) and
``manager`` (the worker's per-request matchers and bitmask; imports torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["StructuredOutputManager"]


def __getattr__(name: str) -> Any:
    if name == "StructuredOutputManager":
        from inferd.structured_output.manager import StructuredOutputManager

        return StructuredOutputManager
    raise AttributeError(name)
