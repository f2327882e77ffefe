"""The text tokenizer: a Hugging Face `tokenizers` BPE read from the checkpoint's `tokenizer.json`.

Special tokens are looked up by NAME in the tokenizer file, never taken from config defaults (HF's
config says bos=1/eos=2, which does not match the real tokenizer).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ..model.config import CheckpointError
from .image_vocab import ImageVocab

REQUIRED_SPECIALS = {"bos": "<s>", "eos": "</s>", "boi": "<racm3:break>", "eoi": "<eoss>"}
OPTIONAL_SPECIALS = {"pad": "<pad>", "eot": "<reserved08706>", "image_placeholder": "<reserved08707>"}


@dataclass(frozen=True)
class SpecialTokens:
    bos: int  # <s>: begins a sequence
    eos: int  # </s>: ends a sequence
    boi: int  # <racm3:break>: begins an image
    eoi: int  # <eoss>: ends an image
    pad: int | None = None  # <pad>
    eot: int | None = None  # <reserved08706>: end of turn
    image_placeholder: int | None = None  # <reserved08707>: HF's <image>

    def ids(self) -> list[int]:
        return [i for i in (self.bos, self.eos, self.boi, self.eoi, self.pad, self.eot, self.image_placeholder)
                if i is not None]


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE writes byte b as one printable character: char -> byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 and up, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


def _decoder_types(decoder: dict | None) -> set[str]:
    if not decoder:
        return set()
    if decoder.get("type") == "Sequence":
        return {t for d in decoder.get("decoders", []) for t in _decoder_types(d)}
    return {decoder.get("type")}


class TextTokenizer:
    """Text <-> ids over one vocabulary that also holds the image tokens and the special tokens."""

    def __init__(self, tokenizer: Tokenizer, source: str = "tokenizer"):
        self.tokenizer = tokenizer
        self.source = source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self.special = self._find_specials(vocab)
        self.image_vocab = ImageVocab.from_vocab(vocab, vocab_size=self.vocab_size, source=source)
        self._decoders = _decoder_types(json.loads(tokenizer.to_str()).get("decoder"))
        self._byte_level = _byte_level_alphabet() if "ByteLevel" in self._decoders else None
        self._added = tokenizer.get_added_tokens_decoder()  # id -> AddedToken
        self.text_token_mask = self._text_mask(vocab)

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions with a parse message
            raise CheckpointError(f"{path}: not a valid tokenizers JSON file ({e})") from None
        return cls(tokenizer, source=str(path))

    def _find_specials(self, vocab: dict[str, int]) -> SpecialTokens:
        missing = [name for name in REQUIRED_SPECIALS.values() if name not in vocab]
        if missing:
            raise CheckpointError(f"{self.source}: missing required special token(s) {', '.join(missing)}")
        ids = {field: vocab[name] for field, name in REQUIRED_SPECIALS.items()}
        ids.update({field: vocab.get(name) for field, name in OPTIONAL_SPECIALS.items()})
        return SpecialTokens(**ids)

    def _text_mask(self, vocab: dict[str, int]) -> torch.Tensor:
        """BoolTensor [vocab_size]: ordinary text tokens. False for image tokens, for every special added token
        (our named specials and e.g. the real vocabulary's thousands of `<reservedNNNNN>`), and for unused ids."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[list(vocab.values())] = True
        mask &= ~self.image_vocab.is_image_token
        mask[self.special.ids()] = False
        special_added = [i for i, tok in self._added.items() if tok.special]
        mask[special_added] = False
        return mask

    @property
    def text_token_ids(self) -> torch.Tensor:
        """LongTensor of the ids in `text_token_mask`."""
        return self.text_token_mask.nonzero().flatten()

    def encode(self, text: str) -> list[int]:
        """Text -> ids, with no BOS or other template tokens added.

        Note: special-token names written in the text (e.g. "<s>") encode as those special tokens, as with
        the reference tokenizer; callers that must not allow that should escape user text themselves.
        """
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        name = self.tokenizer.id_to_token(int(token_id))
        if name is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary of {self.source}")
        return name

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token adds to the decoded text (a token may hold part of a UTF-8 character)."""
        name = self.id_to_token(token_id)
        token_id = int(token_id)
        if token_id in self._added:  # added tokens decode to their literal content
            return self._added[token_id].content.encode("utf-8")
        if self._byte_level is not None and all(c in self._byte_level for c in name):
            return bytes(self._byte_level[c] for c in name)
        if "ByteFallback" in self._decoders and len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
            return bytes([int(name[3:5], 16)])
        if "Metaspace" in self._decoders or "Replace" in self._decoders:
            name = name.replace("\u2581", " ")  # sentencepiece's word-boundary mark stands for a space
        return name.encode("utf-8")
