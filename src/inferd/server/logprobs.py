"""Engine logprobs (``{token_id: Logprob}`` per position, chosen token first) → OpenAI's two JSON shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from inferd.outputs import Logprob, PositionLogprobs

_MIN_LOGPROB = -9999.0  # JSON has no -inf


def clamp_logprob(value: float) -> float:
    if math.isnan(value):
        return _MIN_LOGPROB
    return max(value, _MIN_LOGPROB)


def token_text(token_id: int, logprob: Logprob | None, tokenizer: Any) -> str:
    """The text of one token: the engine's decoded text, else the tokenizer's ("" for ids it does not know)."""
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    if tokenizer is None:
        return f"token_id:{token_id}"
    try:
        return tokenizer.decode([token_id])
    except Exception:  # ids beyond the tokenizer's vocabulary (padded lm heads)
        return ""


def ranked_alternatives(position: PositionLogprobs, k: int) -> list[tuple[int, Logprob]]:
    """The ``k`` most likely entries of one position, most likely first (the chosen token only if it ranks)."""
    if k <= 0:
        return []
    entries = list(position.items())
    if all(lp.rank is None for _, lp in entries):
        return sorted(entries, key=lambda e: -e[1].logprob)[:k]
    ranked = [e for e in entries if e[1].rank is not None and e[1].rank <= k]
    ranked.sort(key=lambda e: e[1].rank or 0)
    return ranked[:k]


def chat_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[PositionLogprobs], top_logprobs: int, tokenizer: Any
) -> list[dict[str, Any]]:
    """``choices[i].logprobs.content`` of a chat completion for these tokens."""
    content: list[dict[str, Any]] = []
    for token_id, position in zip(token_ids, logprobs, strict=False):
        chosen = position.get(token_id)
        text = token_text(token_id, chosen, tokenizer)
        alternatives = []
        for alt_id, alt in ranked_alternatives(position, top_logprobs):
            alt_text = token_text(alt_id, alt, tokenizer)
            alternatives.append(
                {"token": alt_text, "logprob": clamp_logprob(alt.logprob), "bytes": list(alt_text.encode())}
            )
        content.append(
            {
                "token": text,
                "logprob": clamp_logprob(chosen.logprob) if chosen is not None else _MIN_LOGPROB,
                "bytes": list(text.encode()),
                "top_logprobs": alternatives,
            }
        )
    return content


class CompletionLogprobs:
    """Builds ``choices[i].logprobs`` of a (legacy) completion: tokens, token_logprobs, top_logprobs, text_offset.

    ``text_offset`` counts characters from the start of the choice's text (echoed prompt included).
    """

    def __init__(self, num_top: int, tokenizer: Any, offset: int = 0) -> None:
        self.num_top = num_top
        self.tokenizer = tokenizer
        self.offset = offset

    def build(
        self, token_ids: Sequence[int], logprobs: Sequence[PositionLogprobs | None] | None
    ) -> dict[str, Any]:
        """The four lists for these tokens; a position without logprobs (first prompt token) gets nulls."""
        out: dict[str, list[Any]] = {
            "text_offset": [],
            "token_logprobs": [],
            "tokens": [],
            "top_logprobs": [],
        }
        for i, token_id in enumerate(token_ids):
            position = logprobs[i] if logprobs is not None and i < len(logprobs) else None
            chosen = position.get(token_id) if position is not None else None
            text = token_text(token_id, chosen, self.tokenizer)
            out["tokens"].append(text)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            if position is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(clamp_logprob(chosen.logprob) if chosen is not None else None)
            top: dict[str, float] = {}
            if chosen is not None:
                top[text] = clamp_logprob(chosen.logprob)
            for alt_id, alt in ranked_alternatives(position, self.num_top):
                top.setdefault(token_text(alt_id, alt, self.tokenizer), clamp_logprob(alt.logprob))
            out["top_logprobs"].append(top)
        return out
