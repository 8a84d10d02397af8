"""Incremental detokenization: token ids in, stable text deltas out.

The prefix/read-offset window method: each new token is decoded together with a few tokens before it
(starting from a tail of the prompt), and only the text past what was already accounted for is returned,
once it no longer ends in a partial character (U+FFFD). That keeps byte-level BPE (characters split over
tokens) and SentencePiece/Metaspace tokenizers (a leading "▁" is a space except at the very start) exact:
the concatenated deltas of a completion equal ``tokenizer.decode(prompt + output)`` minus
``tokenizer.decode(prompt)``, which is ``tokenizer.decode(output)`` for an empty prompt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_REPLACEMENT_CHAR = "\ufffd"
# The detokenizer starts from a suffix of the prompt (so the first output token's leading space is kept):
# the shortest suffix of at least _MIN_PROMPT_WINDOW tokens, up to _MAX_PROMPT_WINDOW, that decodes cleanly.
_MIN_PROMPT_WINDOW = 4
_MAX_PROMPT_WINDOW = 24
# The decode window slides forward once it holds more tokens than this (one extra decode per slide).
_WINDOW_TOKENS = 12


class TokenDecoder:
    """Decoding services of one tokenizer, shared by all requests.

    Ids outside the tokenizer's vocabulary (models pad their vocabulary, e.g. Qwen3's lm head has 151936
    rows for ~151669 tokens) decode to ``""`` and never raise. Safe to share between requests; not
    thread-safe (single-token decodes are cached).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.vocab_size: int = len(tokenizer)  # ids in [0, vocab_size) may decode to text
        self._backend: Any = _rust_backend(tokenizer)
        self._token_cache: dict[int, str] = {}
        self._added_tokens: dict[int, str] | None = None

    def is_in_vocab(self, token_id: int) -> bool:
        return 0 <= token_id < self.vocab_size

    def decode(
        self,
        token_ids: Sequence[int],
        skip_special_tokens: bool = False,
        spaces_between_special_tokens: bool = True,
    ) -> str:
        """Decode ``token_ids`` as ``tokenizer.decode`` does, without tokenization-space clean-up.

        All ids must be in the vocabulary (see :meth:`is_in_vocab`).
        """
        if self._backend is not None:
            return self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(
            list(token_ids),
            skip_special_tokens=skip_special_tokens,
            spaces_between_special_tokens=spaces_between_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def decode_fn(
        self, skip_special_tokens: bool = False, spaces_between_special_tokens: bool = True
    ) -> Callable[[list[int]], str]:
        """A fast ``ids -> text`` function with these options bound (ids must be in the vocabulary)."""
        if self._backend is not None:
            return functools.partial(self._backend.decode, skip_special_tokens=skip_special_tokens)
        return functools.partial(
            self.decode,
            skip_special_tokens=skip_special_tokens,
            spaces_between_special_tokens=spaces_between_special_tokens,
        )

    def decode_token(self, token_id: int) -> str:
        """Text of one token on its own, special tokens included (logprobs' ``decoded_token``).

        Out-of-vocabulary ids give ``""``. A token holding part of a multi-byte character gives U+FFFD.
        """
        text = self._token_cache.get(token_id)
        if text is None:
            text = self.decode([token_id]) if self.is_in_vocab(token_id) else ""
            self._token_cache[token_id] = text
        return text

    @property
    def added_tokens(self) -> dict[int, str]:
        """Added (special or user-added) tokens: id -> content."""
        if self._added_tokens is None:
            decoder = getattr(self.tokenizer, "added_tokens_decoder", None) or {}
            self._added_tokens = {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}
        return self._added_tokens


def _rust_backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a fast tokenizer whose decode it fully defines, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if getattr(type(tokenizer), "_decode", None) is not PreTrainedTokenizerFast._decode:
        return None  # the class post-processes decoded text: go through tokenizer.decode
    return backend


class IncrementalDetokenizer:
    """Turns one completion's token ids, one at a time, into text deltas.

    Guarantees: a delta never ends in a partial character that a later token completes; deltas only
    append (text already returned is never changed); out-of-vocabulary ids contribute ``""``. With
    ``spaces_between_special_tokens=False`` (and special tokens kept), consecutive added tokens are
    emitted as their raw content, without any separator the tokenizer's decoder would put between them.
    """

    __slots__ = (
        "_added",
        "_decode",
        "_emitted",
        "_ids",
        "_last_was_added",
        "_read_offset",
        "_vocab_size",
    )

    def __init__(
        self,
        decoder: TokenDecoder | PreTrainedTokenizerBase,
        prompt_token_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        decoder = decoder if isinstance(decoder, TokenDecoder) else TokenDecoder(decoder)
        self._decode = decoder.decode_fn(skip_special_tokens, spaces_between_special_tokens)
        self._vocab_size = decoder.vocab_size
        keep_raw_added = not skip_special_tokens and not spaces_between_special_tokens
        self._added = decoder.added_tokens if keep_raw_added else None
        self._last_was_added = False
        # The window: tokens decoded together each step. Its first _read_offset tokens (their text is
        # _emitted characters long) were already accounted for: prompt context or emitted text.
        self._ids, prompt_text = self._prompt_window(prompt_token_ids)
        self._read_offset = len(self._ids)
        self._emitted = len(prompt_text)

    def _prompt_window(self, prompt_token_ids: Sequence[int]) -> tuple[list[int], str]:
        vocab_size = self._vocab_size
        prompt = [t for t in prompt_token_ids[-_MAX_PROMPT_WINDOW:] if 0 <= t < vocab_size]
        fallback = prompt[-_MIN_PROMPT_WINDOW:]
        for size in range(min(_MIN_PROMPT_WINDOW, len(prompt)), len(prompt) + 1):
            text = self._decode(prompt[-size:] if size else [])
            if _REPLACEMENT_CHAR not in text:
                return prompt[len(prompt) - size :], text
        return fallback, self._decode(fallback)

    def decode_next(self, token_id: int) -> str:
        """Add one token; return the text it makes stable (possibly ``""``)."""
        if not 0 <= token_id < self._vocab_size:
            return ""
        ids = self._ids
        ids.append(token_id)
        text = self._decode(ids)
        if len(text) <= self._emitted or text[-1] == _REPLACEMENT_CHAR:
            delta = ""
        else:
            delta = self._accept(text)
        if self._added is not None:
            content = self._added.get(token_id)
            if content is not None and self._last_was_added:
                delta = content
            self._last_was_added = content is not None
        return delta

    def flush(self) -> str:
        """Return the text still held back (a trailing partial character, as U+FFFD); call at the end."""
        text = self._decode(self._ids)
        return self._accept(text) if len(text) > self._emitted else ""

    def _accept(self, text: str) -> str:
        """Emit the new part of ``text`` (the decoded window, ending on a whole character)."""
        delta = text[self._emitted :]
        ids = self._ids
        last_start = self._read_offset
        self._read_offset = len(ids)
        self._emitted = len(text)
        if len(ids) > _WINDOW_TOKENS:
            # Slide: keep the last emitted piece as left context (its leading space depends on it).
            del ids[:last_start]
            self._read_offset = len(ids)
            self._emitted = len(self._decode(ids))
        return delta
