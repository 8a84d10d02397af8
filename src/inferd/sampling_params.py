"""Sampling parameters of one request, named and defaulted as vLLM's."""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Any

_SAMPLING_EPS = 1e-5


@dataclass
class StructuredOutputsParams:
    """Constrain a completion to a JSON schema, a regex, one of a few strings, a grammar or any JSON object
    (vLLM's names). Exactly one of ``json``, ``regex``, ``choice``, ``grammar``, ``json_object`` is set.

    Raises ``ValueError`` starting with ``structured_outputs`` when the constraint is missing, ambiguous or does not
    compile (the schema / regex / grammar is checked with xgrammar here, without a tokenizer).
    """

    json: str | dict[str, Any] | None = None  # a JSON schema (object or its JSON text)
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # EBNF (GBNF-style, rule ``root``) or Lark (rule ``start``)
    json_object: bool | None = None  # any JSON object
    disable_any_whitespace: bool = False  # JSON: compact separators only, no free whitespace
    # inferd: (start, end) token ids of the model's reasoning; the grammar is enforced only once the reasoning
    # has ended (set by a server started with --reasoning-parser).
    reasoning_token_ids: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        from inferd.structured_output.grammar import validate_structured_outputs

        validate_structured_outputs(self)


class RequestOutputKind(enum.IntEnum):
    """What a request's outputs carry each time they are reported."""

    CUMULATIVE = 0  # all text and tokens so far
    DELTA = 1  # only what is new since the last report
    FINAL_ONLY = 2  # one report when the request finishes


@dataclass(init=False)
class SamplingParams:
    """How to sample the completion of one prompt.

    Raises ``ValueError`` with a message naming the parameter when a value is out of range.
    Fields left as ``None`` where the model's generation_config.json may supply a default are
    resolved by :meth:`apply_defaults` before the request is scheduled.
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputsParams | None = None
    # Fields the user set explicitly; the others may take generation_config defaults.
    _user_set: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - _FIELD_NAMES
        if unknown:
            raise ValueError(f"Unknown sampling parameter(s): {', '.join(sorted(unknown))}.")
        for name, default in _DEFAULTS.items():
            value = kwargs.get(name, default)
            setattr(self, name, copy.copy(value))
        self._user_set = frozenset(k for k, v in kwargs.items() if v is not None)
        self._normalize()
        self._verify()

    @classmethod
    def from_optional(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments where ``None`` means "not given" (HTTP request fields)."""
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    # ------------------------------------------------------------------ checks
    def _normalize(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        if self.logit_bias is not None:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError) as e:
                raise ValueError("logit_bias must map token ids to numbers.") from e
        if self.seed is not None:
            self.seed = int(self.seed)
        if self.temperature < _SAMPLING_EPS:
            # Greedy: top-p/top-k/min-p have no effect; normalise so batching can skip them.
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0

    def _verify(self) -> None:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"{name} {msg}")

        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise bad("seed", f"must fit in 64 bits, got {self.seed}.")
        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", f"must be at least 1, got {self.n}.")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _finite(v) or not -2.0 <= v <= 2.0:
                raise bad(name, f"must be in [-2, 2], got {v}.")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0.0:
            raise bad("repetition_penalty", f"must be greater than zero, got {self.repetition_penalty}.")
        if not _finite(self.temperature) or self.temperature < 0.0:
            raise bad("temperature", f"must be non-negative, got {self.temperature}.")
        if not _finite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}.")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", f"must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}.")
        if not _finite(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", f"must be at least 1, got {self.max_tokens}.")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", f"must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad(
                "min_tokens",
                f"must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}.",
            )
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise bad(name, f"must be a non-negative integer, got {v}.")
        if any(not s for s in self.stop):  # type: ignore[union-attr]
            raise bad("stop", "cannot contain an empty string.")
        if any((not isinstance(t, int)) or t < 0 for t in self.stop_token_ids):  # type: ignore[union-attr]
            raise bad("stop_token_ids", "must be non-negative integers.")
        if self.logit_bias is not None:
            for tok, bias in self.logit_bias.items():
                if tok < 0:
                    raise bad("logit_bias", f"has a negative token id {tok}.")
                if not _finite(bias) or not -100.0 <= bias <= 100.0:
                    raise bad("logit_bias", f"values must be in [-100, 100], got {bias} for token {tok}.")
        if self.stop and not self.detokenize:
            raise bad("stop", "strings need detokenize=True.")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                raise bad("structured_outputs", "must be a StructuredOutputsParams.")
            # The grammar ends the output with an EOS / stop token; these would keep it going past the grammar.
            if self.ignore_eos:
                raise bad(
                    "ignore_eos", "cannot be combined with structured outputs; the grammar decides the end."
                )
            if self.min_tokens:
                raise bad(
                    "min_tokens", "cannot be combined with structured outputs; the grammar decides the end."
                )

    # ------------------------------------------------------------------ helpers
    @property
    def sampling_type_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def all_stop_token_ids(self) -> set[int]:
        return set(self.stop_token_ids or [])

    def apply_defaults(self, defaults: dict[str, Any]) -> SamplingParams:
        """Return a copy where fields the user did not set take ``defaults`` (generation_config)."""
        fields = {k: v for k, v in defaults.items() if k in _FIELD_NAMES and k not in self._user_set}
        if not fields:
            return self
        kwargs = {k: getattr(self, k) for k in self._user_set}
        kwargs.update(fields)
        for k in _FIELD_NAMES:
            if k not in kwargs and getattr(self, k) != _DEFAULTS[k]:
                kwargs[k] = getattr(self, k)
        out = SamplingParams(**kwargs)
        out._user_set = self._user_set
        return out

    def clone(self, **changes: Any) -> SamplingParams:
        out = copy.deepcopy(self)
        for k, v in changes.items():
            if k not in _FIELD_NAMES:
                raise ValueError(f"Unknown sampling parameter: {k}.")
            setattr(out, k, v)
        out._normalize()
        out._verify()
        return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "max_tokens": 16,
    "min_tokens": 0,
    "logprobs": None,
    "prompt_logprobs": None,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "include_stop_str_in_output": False,
    "logit_bias": None,
    "output_kind": RequestOutputKind.CUMULATIVE,
    "structured_outputs": None,
}
_FIELD_NAMES = frozenset(_DEFAULTS)
