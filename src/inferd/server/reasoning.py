"""Reasoning parsers (``--reasoning-parser``): split a model's ``<think>…</think>`` from its answer.

One parser object per choice. Streaming and whole-text parsing run the same state machine, so a streamed
response's ``reasoning_content`` / ``content`` concatenate to exactly the non-streamed ones.
"""

from __future__ import annotations

from typing import Any

_UNDECIDED, _REASONING, _ANSWER_START, _CONTENT = range(4)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (held back while streaming)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class Qwen3ReasoningParser:
    """Qwen3 (and DeepSeek-R1 style) ``<think>`` reasoning.

    The output is reasoning when it starts with ``<think>`` (leading whitespace ignored) or when the prompt left a
    ``<think>`` open (templates that pre-fill it); reasoning runs until ``</think>``. Everything else is content;
    whitespace right after ``</think>`` is dropped. With ``enable_thinking: false`` Qwen3's template closes the
    think block in the prompt, so the whole output is content. Output cut off inside the reasoning has no content.
    """

    start_token = "<think>"
    end_token = "</think>"

    def __init__(self, prompt: str = "") -> None:
        opened = prompt.rfind(self.start_token) > prompt.rfind(self.end_token)
        self._state = _REASONING if opened else _UNDECIDED
        self._buf = ""  # text received but not yet emitted

    @classmethod
    def token_ids(cls, tokenizer: Any) -> tuple[int, int] | None:
        """(start, end) ids when both delimiters are single tokens of ``tokenizer`` (grammar gating), else None."""
        if tokenizer is None:
            return None
        ids = []
        for tag in (cls.start_token, cls.end_token):
            token_id = tokenizer.convert_tokens_to_ids(tag)
            if not isinstance(token_id, int) or token_id == getattr(tokenizer, "unk_token_id", None):
                return None
            if tokenizer.convert_ids_to_tokens(token_id) != tag:
                return None
            ids.append(token_id)
        return ids[0], ids[1]

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) newly decided by ``text``; a possible partial tag is held back."""
        self._buf += text
        return self._step(final=False)

    def finish(self) -> tuple[str, str]:
        """(reasoning, content) still held back at the end of the output."""
        return self._step(final=True)

    def extract(self, text: str) -> tuple[str | None, str | None]:
        """Whole-output parsing: (reasoning_content, content), each None when empty."""
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return (r1 + r2) or None, (c1 + c2) or None

    def _step(self, final: bool) -> tuple[str, str]:
        reasoning, content = [], []
        while True:
            buf = self._buf
            if self._state == _UNDECIDED:
                stripped = buf.lstrip()
                if stripped.startswith(self.start_token):
                    self._buf = stripped[len(self.start_token) :]
                    self._state = _REASONING
                    continue
                if not final and self.start_token.startswith(stripped):
                    return "", ""  # empty, whitespace or a prefix of <think>: wait
                self._state = _CONTENT
                continue
            if self._state == _REASONING:
                end = buf.find(self.end_token)
                if end >= 0:
                    reasoning.append(buf[:end])
                    self._buf = buf[end + len(self.end_token) :]
                    self._state = _ANSWER_START
                    continue
                keep = 0 if final else _partial_suffix(buf, self.end_token)
                reasoning.append(buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                break
            if self._state == _ANSWER_START:
                stripped = buf.lstrip()
                if not stripped:
                    self._buf = ""
                    break
                self._buf = stripped
                self._state = _CONTENT
                continue
            content.append(buf)
            self._buf = ""
            break
        return "".join(reasoning), "".join(content)


REASONING_PARSERS: dict[str, type[Qwen3ReasoningParser]] = {"qwen3": Qwen3ReasoningParser}
