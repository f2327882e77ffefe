"""Prompt layout: the exact token sequence a chat or a raw prompt becomes (see tokenizers/prompt.py)."""
import json

import pytest
import torch
from PIL import Image

from chameleon_serve.model.config import VQConfig
from chameleon_serve.model.vqgan import VQModel
from chameleon_serve.tokenizers import (
    ChatMessage,
    ImageTokenizer,
    PromptError,
    TextTokenizer,
    build_chat_prompt,
    build_text_prompt,
    build_tokenizer,
)

CORPUS = ["What is in this picture? A red square on a white background.", "Be brief.\nThanks!"] * 20
VQ = VQConfig(resolution=16, base_channels=32, channel_multiplier=(1, 2), num_res_blocks=1,
              latent_channels=32, num_embeddings=32, embed_dim=8)


def tokenizer_file(tmp_path, drop_eot=False):
    data = json.loads(build_tokenizer(CORPUS, vocab_size=400, num_image_codes=32, image_token_layout="scattered").to_str())
    if drop_eot:
        data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<reserved08706>"]
        data["model"]["vocab"].pop("<reserved08706>")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def text(tmp_path):
    return TextTokenizer.from_file(tokenizer_file(tmp_path))


@pytest.fixture
def image_tok(text):
    torch.manual_seed(0)
    return ImageTokenizer(VQModel(VQ, with_decoder=False), text.image_vocab)


def test_chat_with_text_and_image_exact_sequence(text, image_tok):
    picture = Image.new("RGB", (20, 16), (200, 30, 30))
    messages = [
        ChatMessage("user", ["What is in this picture?", picture]),
        ChatMessage("assistant", ["A red square."]),
        ChatMessage("system", ["Be brief."]),  # moved to the front
        ChatMessage("user", ["Thanks!"]),
    ]
    s = text.special
    image_ids = image_tok.image_to_tokens(picture)
    assert len(image_ids) == image_tok.num_tokens == 64 and all(text.image_vocab.is_image_token[image_ids])
    expected = (
        [s.bos]
        + text.encode("Be brief.") + [s.eot]
        + text.encode("What is in this picture?") + [s.boi] + image_ids + [s.eoi] + [s.eot]
        + text.encode("A red square.") + [s.eot]
        + text.encode("Thanks!") + [s.eot]
    )
    assert build_chat_prompt(messages, text, image_tok) == expected
    assert text.decode(build_chat_prompt(messages[:2], text, image_tok)).startswith(
        "<s>What is in this picture?<racm3:break>IMGIMG"
    )


def test_last_assistant_message_is_left_open_for_prefill(text):
    s = text.special
    ids = build_chat_prompt([ChatMessage("user", ["Hi"]), ChatMessage("assistant", ["Hello"])], text)
    assert ids == [s.bos] + text.encode("Hi") + [s.eot] + text.encode("Hello")


def test_without_end_of_turn_token_turns_end_with_newline(tmp_path):
    text = TextTokenizer.from_file(tokenizer_file(tmp_path, drop_eot=True))
    assert text.special.eot is None
    ids = build_chat_prompt([ChatMessage("system", "Be brief."), ChatMessage("user", "Thanks!")], text)
    assert ids == [text.special.bos] + text.encode("Be brief.") + text.encode("\n") + text.encode("Thanks!") + text.encode("\n")


def test_text_prompt_is_bos_then_text(text, image_tok):
    assert build_text_prompt("What is", text) == [text.special.bos] + text.encode("What is")
    picture = Image.new("RGB", (16, 16))
    ids = build_text_prompt(["A", picture], text, image_tok)
    assert ids == [text.special.bos] + text.encode("A") + [text.special.boi] + image_tok.image_to_tokens(picture) + [text.special.eoi]


def test_prompt_errors(text):
    with pytest.raises(PromptError, match="no VQ image encoder"):
        build_chat_prompt([ChatMessage("user", ["look", Image.new("RGB", (16, 16))])], text, None)
    with pytest.raises(PromptError, match="unknown message role 'tool'"):
        ChatMessage("tool", ["x"])
    with pytest.raises(PromptError, match="text or PIL images"):
        build_chat_prompt([ChatMessage("user", [b"bytes"])], text)
    with pytest.raises(PromptError, match="at least one message"):
        build_chat_prompt([], text)
