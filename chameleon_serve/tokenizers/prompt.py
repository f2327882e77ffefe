"""Prompt conventions: the ONE place that decides what token sequence a chat or a raw prompt becomes.

Chameleon has no chat template with role names. Following Meta's viewer, a chat is the turns' contents
back to back, each turn closed by the end-of-turn token, after a single BOS:

    <s>
      [system turn]      text/images of every system message, in order, then <reserved08706>
      user turn          content, then <reserved08706>
      assistant turn     content, then <reserved08706>
      ...
      user turn          content, then <reserved08706>      <- generation continues here

- Content parts are encoded one by one in order: a text part as its BPE ids (no BOS, no added spaces),
  an image part as  <racm3:break> + num_tokens image-token ids + <eoss>.
- System messages, wherever they appear, are gathered into one leading turn.
- Roles are not written into the sequence: they only decide the order of turns.
- If the last message is from the assistant, its turn is left open (no end-of-turn), so the model
  continues that text: a prefill.
- If the tokenizer has no end-of-turn token, turns are separated by newlines instead: each closed turn
  is followed by the ids of "\n" (the same layout, with "\n" in place of <reserved08706>).

A raw completion prompt (`build_text_prompt`) is  <s> + content, with no end-of-turn.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from .image import ImageTokenizer
from .text import TextTokenizer

ROLES = ("system", "user", "assistant")
Content = Sequence["str | Image.Image"]


class PromptError(ValueError):
    """A prompt cannot be built (unknown role, an image without a VQ encoder, bad content)."""


@dataclass
class ChatMessage:
    role: str
    content: list[str | Image.Image] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PromptError(f"unknown message role {self.role!r}: expected one of {', '.join(ROLES)}")
        if isinstance(self.content, (str, Image.Image)):
            self.content = [self.content]


def encode_content(
    content: Content, text_tokenizer: TextTokenizer, image_tokenizer: ImageTokenizer | None
) -> list[int]:
    """Text parts -> BPE ids; image parts -> boi + image tokens + eoi."""
    special = text_tokenizer.special
    ids: list[int] = []
    for part in content:
        if isinstance(part, str):
            ids += text_tokenizer.encode(part)
        elif isinstance(part, Image.Image):
            if image_tokenizer is None:
                raise PromptError("the prompt contains an image, but this model has no VQ image encoder")
            ids += [special.boi, *image_tokenizer.image_to_tokens(part), special.eoi]
        else:
            raise PromptError(f"content parts must be text or PIL images, got {type(part).__name__}")
    return ids


def _turn_end(text_tokenizer: TextTokenizer) -> list[int]:
    eot = text_tokenizer.special.eot
    return [eot] if eot is not None else text_tokenizer.encode("\n")


def build_chat_prompt(
    messages: Sequence[ChatMessage],
    text_tokenizer: TextTokenizer,
    image_tokenizer: ImageTokenizer | None = None,
) -> list[int]:
    """Messages -> prompt ids, laid out as the module docstring describes."""
    if not messages:
        raise PromptError("a chat needs at least one message")
    system = [part for m in messages if m.role == "system" for part in m.content]
    turns = [m for m in messages if m.role != "system"]
    turn_end = _turn_end(text_tokenizer)

    ids = [text_tokenizer.special.bos]
    if system:
        ids += encode_content(system, text_tokenizer, image_tokenizer) + turn_end
    for i, message in enumerate(turns):
        ids += encode_content(message.content, text_tokenizer, image_tokenizer)
        open_prefill = i == len(turns) - 1 and message.role == "assistant"
        if not open_prefill:
            ids += turn_end
    return ids


def build_text_prompt(
    content: str | Content,
    text_tokenizer: TextTokenizer,
    image_tokenizer: ImageTokenizer | None = None,
) -> list[int]:
    """A raw completion prompt: <s> + the content (text, or a list of text and images)."""
    parts = [content] if isinstance(content, str) else content
    return [text_tokenizer.special.bos] + encode_content(parts, text_tokenizer, image_tokenizer)
