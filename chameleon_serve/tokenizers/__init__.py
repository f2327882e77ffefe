"""Tokenizers: text BPE, image-token maps, the VQGAN image tokenizer, prompt building.

`load_tokenizers` is the entry point for a checkpoint: it reads `tokenizer.json` and pairs it with the
checkpoint's VQGAN, checking that the vocabulary has one image token per codebook entry.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.config import CheckpointError
from ..model.vqgan import VQModel
from .detokenize import IncrementalDetokenizer
from .image import ImageTokenizer
from .image_vocab import ImageVocab, parse_image_token
from .prompt import ChatMessage, PromptError, build_chat_prompt, build_text_prompt, encode_content
from .text import SpecialTokens, TextTokenizer
from .train import build_tokenizer, image_token_name


def load_tokenizers(
    tokenizer_path: str | Path,
    vqgan: VQModel | None,
    device: str | torch.device = "cpu",
) -> tuple[TextTokenizer, ImageTokenizer | None]:
    """(text tokenizer, image tokenizer or None when the checkpoint has no VQ model)."""
    text = TextTokenizer.from_file(tokenizer_path)
    if vqgan is None:
        return text, None
    codebook = vqgan.config.num_embeddings
    if text.image_vocab.num_codes != codebook:
        raise CheckpointError(
            f"{tokenizer_path}: {text.image_vocab.num_codes} image tokens, but the VQ codebook has {codebook} entries"
        )
    return text, ImageTokenizer(vqgan, text.image_vocab, device=device)


__all__ = [
    "ChatMessage",
    "ImageTokenizer",
    "ImageVocab",
    "IncrementalDetokenizer",
    "PromptError",
    "SpecialTokens",
    "TextTokenizer",
    "build_chat_prompt",
    "build_text_prompt",
    "build_tokenizer",
    "encode_content",
    "image_token_name",
    "load_tokenizers",
    "parse_image_token",
]
