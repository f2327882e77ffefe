"""Streaming detokenization: deltas concatenate to the full decode and never show a broken character."""
import random

import pytest

from chameleon_serve.tokenizers import IncrementalDetokenizer, TextTokenizer, build_tokenizer

CORPUS = ["The quick brown fox jumps over the lazy dog.", "café naïve 中文 日本語 😀 🎉", "Hello, world!\n"] * 20
ALPHABET = list("abc xyz,.!\n\t") + list("éñü中文字日本語한국") + ["😀", "🎉", "👍🏽", "👨‍👩‍👧", "𝔘", "ẞ"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_tokenizer(CORPUS, vocab_size=400, num_image_codes=16).save(str(path))
    return TextTokenizer.from_file(path)


def stream(tokenizer, ids):
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids]
    return deltas, detok.flush()


def test_random_multibyte_strings(tokenizer):
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
        ids = tokenizer.encode(text)
        deltas, tail = stream(tokenizer, ids)
        assert "".join(deltas) + tail == tokenizer.decode(ids) == text
        assert not any("\ufffd" in d for d in deltas), (text, deltas)
        assert tail == ""  # valid UTF-8: nothing is left over


def test_emoji_split_over_byte_tokens_is_held_back_then_emitted_whole(tokenizer):
    ids = tokenizer.encode("a🦜")  # a parrot: not in the corpus, so one token per byte
    assert len(ids) >= 4
    deltas, _ = stream(tokenizer, ids)
    assert deltas[0] == "a"
    assert deltas[1:-1] == [""] * (len(ids) - 2)
    assert deltas[-1] == "🦜"


def test_special_and_image_tokens_are_emitted_as_decode_shows_them(tokenizer):
    s = tokenizer.special
    ids = tokenizer.encode("hi") + [s.eot] + tokenizer.encode(" 中") + [s.eos]
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) + tail == tokenizer.decode(ids)
    skip = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    assert "".join(skip.push(i) for i in ids) + skip.flush() == "hi 中"


def test_flush_releases_bytes_that_never_complete(tokenizer):
    ids = tokenizer.encode("x😀")[:-1]  # cut the emoji short: its last byte never comes
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) == "x"
    assert tail == tokenizer.decode(ids)[1:] and tail.endswith("\ufffd")


class CountingTokenizer:
    """A real tokenizer that records how many ids each decode call sees."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def decode(self, ids, skip_special_tokens=False):
        self.sizes.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


def test_work_per_token_does_not_grow_with_length(tokenizer):
    counting = CountingTokenizer(tokenizer)
    detok = IncrementalDetokenizer(counting)
    ids = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 40)
    assert len(ids) > 200
    for i in ids:
        detok.push(i)
    assert max(counting.sizes) <= 4
