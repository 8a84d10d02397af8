"""Incremental detokenization with real (tiny, trained-on-the-spot) byte-level BPE and SentencePiece-style tokenizers."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.engine.detokenizer import IncrementalDetokenizer, TokenDecoder

_CORPUS = [
    "Hello world, this is a test. The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée, naïve façade: é è ê à ç.",
    "中文字符测试，你好世界。汉字很有趣。",
    "emoji party 😀🎉👍🚀 and more 🙂 fun.",
    "def add(a, b):\n    return a + b\n",
]
_ALPHABET = "abcdefgh ABC,.!?\n\téèçü中文字你好😀🎉👍ß€"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_level_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 10, trainer=trainer)
    tok.add_tokens([AddedToken("<think>", special=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _metaspace_tokenizer():
    """Llama-2 style: Metaspace pre-tokenizer, <0xNN> byte-fallback tokens, decoder that strips the first space."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=150, limit_alphabet=40, show_progress=False)
    trained.train_from_iterator(_CORPUS * 10, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    # Byte tokens are ordinary vocabulary entries (not special), as in Llama's tokenizer.
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for tok in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _wordpiece_tokenizer():
    """A decoder that puts spaces between tokens (WordPiece), to see spaces_between_special_tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def byte_level():
    return _byte_level_tokenizer()


@pytest.fixture(scope="module")
def metaspace():
    return _metaspace_tokenizer()


def _stream(tokenizer, prompt_ids, ids, **kwargs) -> list[str]:
    detok = IncrementalDetokenizer(TokenDecoder(tokenizer), prompt_ids, **kwargs)
    deltas = [detok.decode_next(t) for t in ids]
    deltas.append(detok.flush())
    return deltas


def test_multibyte_chars_are_split_over_tokens_in_the_tiny_vocab(byte_level):
    ids = byte_level.encode("😀", add_special_tokens=False)
    assert len(ids) > 1  # otherwise the tests below would not exercise partial characters
    assert "\ufffd" in byte_level.decode(ids[:1])


@pytest.mark.parametrize("tok_name", ["byte_level", "metaspace"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=_ALPHABET, min_size=1, max_size=40), prompt=st.text(alphabet=_ALPHABET, max_size=12)
)
def test_streamed_text_equals_full_decode_and_never_shows_partial_chars(request, tok_name, text, prompt):
    tokenizer = request.getfixturevalue(tok_name)
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    deltas = _stream(tokenizer, prompt_ids, ids)
    full = tokenizer.decode(prompt_ids + ids)
    expected = full[len(tokenizer.decode(prompt_ids)) :]
    assert "".join(deltas) == expected
    assert deltas[-1] == ""  # nothing was held back at the end of valid text
    assert all("\ufffd" not in d for d in deltas)
    if not prompt_ids:
        assert "".join(deltas) == tokenizer.decode(ids)


@pytest.mark.parametrize("tok_name", ["byte_level", "metaspace"])
def test_long_text_streams_exactly(request, tok_name):
    tokenizer = request.getfixturevalue(tok_name)
    prompt_ids = tokenizer.encode("Write something:", add_special_tokens=False)
    ids = tokenizer.encode(" " + " ".join(_CORPUS * 3), add_special_tokens=False)
    assert len(ids) > 200
    text = "".join(_stream(tokenizer, prompt_ids, ids))
    assert text == " " + " ".join(_CORPUS * 3)


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_byte_level_ids_stream_to_the_same_text_as_decode(byte_level, skip_special_tokens):
    # Any id sequence, invalid UTF-8 included. (Byte-fallback decoders turn a whole invalid byte run into
    # U+FFFDs, which no incremental decoder can reproduce: valid text is what the test above covers there.)
    tokenizer = byte_level
    rng = random.Random(0)
    for _ in range(40):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 30))]
        deltas = _stream(tokenizer, [], ids, skip_special_tokens=skip_special_tokens)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def test_sentencepiece_keeps_the_space_before_the_first_output_token(metaspace):
    prompt = metaspace.encode("Hello", add_special_tokens=False)
    out = metaspace.encode(" world", add_special_tokens=False)
    assert metaspace.convert_ids_to_tokens(out[0]).startswith("▁")
    assert "".join(_stream(metaspace, prompt, out)) == " world"
    assert "".join(_stream(metaspace, [], out)) == metaspace.decode(out)  # no prompt: no leading space


def test_out_of_vocab_ids_decode_to_nothing(byte_level):
    decoder = TokenDecoder(byte_level)
    ids = byte_level.encode("Hello 中文", add_special_tokens=False)
    oov = [len(byte_level), len(byte_level) + 7, 151935]
    mixed = [ids[0], *oov, *ids[1:], oov[0]]
    assert "".join(_stream(byte_level, oov, mixed)) == byte_level.decode(ids)
    assert decoder.decode_token(oov[1]) == ""
    assert not decoder.is_in_vocab(oov[0]) and decoder.is_in_vocab(ids[0])


def test_skip_special_tokens(byte_level):
    im_end = byte_level.convert_tokens_to_ids("<|im_end|>")
    think = byte_level.convert_tokens_to_ids("<think>")  # added but not special: always shown
    ids = [*byte_level.encode("Hi", add_special_tokens=False), think, im_end]
    assert "".join(_stream(byte_level, [], ids, skip_special_tokens=True)) == "Hi<think>"
    assert "".join(_stream(byte_level, [], ids, skip_special_tokens=False)) == "Hi<think><|im_end|>"


def test_spaces_between_special_tokens():
    tokenizer = _wordpiece_tokenizer()
    ids = [3, 1, 2, 4, 5]  # hello [CLS] [SEP] world ##s
    with_spaces = "".join(_stream(tokenizer, [], ids, skip_special_tokens=False))
    assert with_spaces == tokenizer.decode(ids) == "hello [CLS] [SEP] worlds"
    without = "".join(
        _stream(tokenizer, [], ids, skip_special_tokens=False, spaces_between_special_tokens=False)
    )
    assert without == "hello [CLS][SEP] worlds"
    assert "".join(_stream(tokenizer, [], ids, skip_special_tokens=True)) == "hello worlds"


def test_decode_token_for_logprobs(byte_level, metaspace):
    decoder = TokenDecoder(byte_level)
    hello = byte_level.encode("Hello", add_special_tokens=False)
    assert "".join(decoder.decode_token(t) for t in hello) == "Hello"
    assert decoder.decode_token(byte_level.convert_tokens_to_ids("<|im_end|>")) == "<|im_end|>"
    partial = byte_level.encode("😀", add_special_tokens=False)[0]
    assert decoder.decode_token(partial) == "\ufffd"
    assert TokenDecoder(metaspace).decode_token(len(metaspace) + 3) == ""


def test_tokenizers_that_post_process_decode_go_through_tokenizer_decode(byte_level):
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper()

    shouting = Shouting(tokenizer_object=byte_level.backend_tokenizer)
    ids = byte_level.encode("Hello 中文 world", add_special_tokens=False)
    assert "".join(_stream(shouting, [], ids)) == "HELLO 中文 WORLD"
