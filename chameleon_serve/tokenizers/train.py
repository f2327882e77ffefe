"""Train a small Chameleon-style tokenizer: byte-level BPE for text plus named image-code tokens.

Used by the demo-model recipe (a real corpus) and by the test helpers (tiny random checkpoints).
The result is a plain `tokenizers.Tokenizer`, saved as `tokenizer.json` like the real one, with:

- the special tokens of the real vocabulary, by the same names (`<s>`, `</s>`, `<pad>`, `<unk>`,
  `<racm3:break>`, `<eoss>`, `<reserved08706>`, `<reserved08707>`), registered as special added tokens;
- `num_image_codes` image tokens `IMGIMG<digits as letters A..J>Z` (code 53 -> `IMGIMGFDZ`), kept in the
  BPE vocabulary but reachable by no merge, so no text ever encodes to an image token;
- a byte-level BPE over `texts`, with no prefix space, so `decode(encode(s)) == s` for any string.

Layouts of the ids:
- "contiguous": `<s>` `</s>` `<pad>` `<unk>` at 0..3, image codes 0..n-1 at ids 4..n+3 (as in the real
  vocabulary), then the other specials, then the text tokens.
- "scattered": image tokens in reversed code order, interleaved with text tokens, and the specials spread
  out, so that code that assumes an offset or an order breaks in tests.

The tokenizer has at most `vocab_size` entries (fewer when the corpus has too few distinct merges), so
a model with `vocab_size` embedding rows covers every id.
"""
from __future__ import annotations

import json
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from .image_vocab import IMAGE_TOKEN_PREFIX, IMAGE_TOKEN_SUFFIX
LEADING_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")
OTHER_SPECIALS = ("<eoss>", "<racm3:break>", "<reserved08706>", "<reserved08707>")
SPECIAL_TOKENS = LEADING_SPECIALS + OTHER_SPECIALS
BYTE_ALPHABET_SIZE = 256


def image_token_name(code: int) -> str:
    """53 -> 'IMGIMGFDZ': each decimal digit written as a letter, A=0 .. J=9."""
    letters = "".join(chr(ord("A") + int(d)) for d in str(code))
    return f"{IMAGE_TOKEN_PREFIX}{letters}{IMAGE_TOKEN_SUFFIX}"


def _train_text_bpe(texts: Iterable[str], text_vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-level BPE over texts -> (token names in id order, merges in rank order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=text_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    names = [name for name, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return names, merges


def _layout(text_names: list[str], image_names: list[str], layout: str) -> list[str]:
    """All token names in id order."""
    if layout == "contiguous":
        return list(LEADING_SPECIALS) + image_names + list(OTHER_SPECIALS) + text_names
    if layout == "scattered":
        # Text first (so no image token sits at id 4), then image tokens in reversed code order with a text
        # token after each one while text lasts, and the non-leading specials spread through the middle.
        names = list(LEADING_SPECIALS) + text_names[:3]
        rest_text = text_names[3:]
        specials = list(OTHER_SPECIALS)
        for i, image_name in enumerate(reversed(image_names)):
            names.append(image_name)
            if rest_text:
                names.append(rest_text.pop(0))
            if specials and i % 7 == 3:
                names.append(specials.pop())
        return names + specials + rest_text
    raise ValueError(f"image_token_layout must be 'contiguous' or 'scattered', got {layout!r}")


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    num_image_codes: int,
    image_token_layout: str = "contiguous",
) -> Tokenizer:
    """A byte-level BPE tokenizer with Chameleon's special tokens and `num_image_codes` image tokens."""
    if num_image_codes < 1:
        raise ValueError(f"num_image_codes must be >= 1, got {num_image_codes}")
    text_vocab_size = vocab_size - num_image_codes - len(SPECIAL_TOKENS)
    if text_vocab_size < BYTE_ALPHABET_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: {num_image_codes} image tokens + {len(SPECIAL_TOKENS)} specials "
            f"+ {BYTE_ALPHABET_SIZE} byte tokens need at least "
            f"{num_image_codes + len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE}"
        )
    text_names, merges = _train_text_bpe(texts, text_vocab_size)
    image_names = [image_token_name(c) for c in range(num_image_codes)]
    names = _layout(text_names, image_names, image_token_layout)
    vocab = {name: i for i, name in enumerate(names)}

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Already in the vocab, so they keep their ids; registering them makes `<s>` in text encode as one token.
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in SPECIAL_TOKENS])
    return tok
