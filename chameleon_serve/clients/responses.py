"""What a chat returns: an ordered list of text and image parts, a finish reason and token usage."""
from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # PIL is a base dependency, but only decode when asked to.
    from PIL import Image as PILImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class TextPart:
    """A run of text, in its place between images."""

    text: str

    def to_content_part(self) -> dict[str, Any]:
        """The OpenAI content part for this text (for sending it back in a later message)."""
        return {"type": "text", "text": self.text}


@dataclass(frozen=True, eq=True)
class ImagePart:
    """One image, held as the PNG bytes the server sent.

    `image` decodes it with Pillow (once, on first use); `size` reads only the PNG header.
    """

    png: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.png.startswith(PNG_SIGNATURE):
            raise ValueError("ImagePart holds PNG bytes; these do not start with the PNG signature")

    @classmethod
    def from_base64(cls, data: str) -> "ImagePart":
        """From base64 PNG data (the images API's `b64_json`)."""
        try:
            return cls(base64.b64decode(data, validate=True))
        except binascii.Error as error:
            raise ValueError(f"invalid base64 image data: {error}") from error

    @classmethod
    def from_data_url(cls, url: str) -> "ImagePart":
        """From a `data:image/png;base64,...` URL, as the server sends images."""
        header, sep, data = url.partition(",")
        if not sep or not header.startswith("data:") or not header.endswith(";base64"):
            raise ValueError(f"expected a base64 data URL, got {url[:40]!r}...")
        return cls.from_base64(data)

    @property
    def data_url(self) -> str:
        """This image as a `data:image/png;base64,...` URL (for sending it back in a later message)."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header without decoding the image."""
        # The IHDR chunk always comes first: 8-byte signature, 4-byte length, b"IHDR", width, height.
        if len(self.png) < 24 or self.png[12:16] != b"IHDR":
            raise ValueError("PNG has no IHDR header")
        return int.from_bytes(self.png[16:20], "big"), int.from_bytes(self.png[20:24], "big")

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @cached_property
    def image(self) -> "PILImage.Image":
        """The decoded image as a Pillow image (decoded on first access, then cached)."""
        from PIL import Image

        decoded = Image.open(io.BytesIO(self.png))
        decoded.load()
        return decoded

    def save(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write the PNG bytes, unchanged, to `path` (parent folders are created). Returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.png)
        return target

    def to_content_part(self) -> dict[str, Any]:
        """The OpenAI content part for this image (for sending it back in a later message)."""
        return {"type": "image_url", "image_url": {"url": self.data_url}}


Part = Union[TextPart, ImagePart]


@dataclass(frozen=True)
class Usage:
    """Token counts for one response. `image_tokens` includes the begin/end-of-image markers."""

    prompt_tokens: int
    completion_tokens: int
    text_tokens: int = 0
    image_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_api(cls, usage: dict[str, Any]) -> "Usage":
        """From the protocol's `usage` object."""
        details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            text_tokens=int(details.get("text_tokens") or 0),
            image_tokens=int(details.get("image_tokens") or 0),
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens,
        }


@dataclass
class ChatResponse:
    """One assistant answer: text and images in the order the model produced them.

    Consecutive text is always merged into one `TextPart`, and empty text is dropped, so a
    streamed answer collected with `collect_stream` equals the non-streamed answer part for part.
    """

    parts: list[Part]
    finish_reason: str | None
    usage: Usage | None = None
    id: str | None = None
    model: str | None = None

    @property
    def text(self) -> str:
        """All text parts joined, without the images."""
        return "".join(part.text for part in self.parts if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        """The images, in order."""
        return [part for part in self.parts if isinstance(part, ImagePart)]

    def to_message(self) -> dict[str, Any]:
        """This answer as an assistant message, to send back as history in the next request."""
        if all(isinstance(part, TextPart) for part in self.parts):
            return {"role": "assistant", "content": self.text}
        return {"role": "assistant", "content": [part.to_content_part() for part in self.parts]}


def append_text(parts: list[Part], text: str) -> None:
    """Append text to an ordered part list, merging it into a trailing TextPart."""
    if not text:
        return
    if parts and isinstance(parts[-1], TextPart):
        parts[-1] = TextPart(parts[-1].text + text)
    else:
        parts.append(TextPart(text))
