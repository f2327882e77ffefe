"""What the engine says about a request, in order: the only way results leave the engine.

Per request the stream is: any mix of TextDelta and image blocks (ImageStarted, ImageProgress*,
ImageDone), then exactly one Finished or Error. Events carry plain Python values (str, bytes, ints):
no tensors cross this boundary.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: list[int]
    top: list["TokenLogprob"] = field(default_factory=list)  # alternatives, best first


@dataclass
class TextDelta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when asked


@dataclass
class ImageStarted:
    index: int  # 0-based image number within the response
    width: int
    height: int
    num_tokens: int  # image tokens to come


@dataclass
class ImageProgress:
    index: int
    tokens_done: int
    num_tokens: int
    preview_png: bytes | None = None  # only when previews were asked for


@dataclass
class ImageDone:
    index: int
    png: bytes
    width: int
    height: int


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int  # every generated token: text, image and image delimiters
    text_tokens: int
    image_tokens: int  # image codes plus begin/end-of-image markers

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Finished:
    # "stop" (</s>, end-of-turn, stop string, or the image of an image-only request),
    # "length" (max_tokens or the context), "image_limit" is never used: hitting the image cap just
    # forbids more images. "cancelled" when the caller cancelled.
    finish_reason: str
    usage: Usage
    images: int
    stop_reason: str | None = None  # which stop string or special token ended it, when known
    token_ids: list[int] = field(default_factory=list)  # every generated token, image blocks included


@dataclass
class Error:
    message: str
    type: str = "engine_error"


Event = TextDelta | ImageStarted | ImageProgress | ImageDone | Finished | Error
