"""Turn what a caller has (text, Pillow images, file paths, raw bytes) into protocol messages.

Images always travel as `data:` URLs inside `image_url` content parts: a Pillow image is encoded
as PNG; bytes and files keep their encoding when the server reads it (PNG, JPEG, WebP, GIF, told
apart by their first bytes) and are re-encoded as PNG otherwise (BMP, TIFF, ...).
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from .responses import ImagePart, TextPart

if TYPE_CHECKING:
    from PIL import Image as PILImage

# Something that can be sent as an image. A `str` is a file path, unless it already is a
# `data:`, `http://` or `https://` URL (sent as is).
ImageInput = Union["PILImage.Image", bytes, bytearray, memoryview, str, "os.PathLike[str]", ImagePart]

# One element of a message's content list: a `str` here is text (use a Path for a file).
ContentItem = Union[str, TextPart, ImagePart, "PILImage.Image", bytes, bytearray, memoryview, "os.PathLike[str]", Mapping[str, Any]]

Message = Mapping[str, Any]

# MIME types the server decodes directly (docs/protocol.md), by their leading bytes.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_image_mime_type(data: bytes) -> str | None:
    """The MIME type of image bytes the server accepts as they are (PNG, JPEG, GIF, WebP), else None."""
    for signature, mime_type in _SIGNATURES:
        if data.startswith(signature):
            return mime_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def pil_image_to_png(image: "PILImage.Image") -> bytes:
    """Encode a Pillow image as PNG, converting modes PNG cannot store (CMYK, YCbCr, ...) to RGB(A)."""
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes_to_data_url(data: bytes) -> str:
    """A data URL for encoded image bytes; formats the server does not read are converted to PNG."""
    mime_type = sniff_image_mime_type(data)
    if mime_type is None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.load()
                data, mime_type = pil_image_to_png(decoded), "image/png"
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(
                f"these {len(data)} bytes are not an image Pillow can read (expected PNG, JPEG, WebP or GIF)"
            ) from error
    return f"data:{mime_type};base64," + base64.b64encode(data).decode("ascii")


def image_to_data_url(image: ImageInput) -> str:
    """Encode any accepted image input as a URL for an `image_url` content part.

    Accepts a Pillow image, encoded bytes, an `ImagePart`, a file path (`str` or `os.PathLike`), or a
    `str` that already is a `data:`/`http(s)://` URL. Raises `ValueError` for bytes that are not an
    image, `FileNotFoundError` for a missing file and `TypeError` for anything else.
    """
    if isinstance(image, ImagePart):
        return image.data_url
    if isinstance(image, (bytes, bytearray, memoryview)):
        return image_bytes_to_data_url(bytes(image))
    if isinstance(image, str) and image.startswith(("data:", "http://", "https://")):
        return image
    if isinstance(image, (str, os.PathLike)):
        return image_bytes_to_data_url(Path(image).read_bytes())
    if _is_pil_image(image):
        return "data:image/png;base64," + base64.b64encode(pil_image_to_png(image)).decode("ascii")
    raise TypeError(f"cannot send {type(image).__name__} as an image; pass a PIL image, bytes or a file path")


def image_content_part(image: ImageInput) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_to_data_url(image)}}


def content_part(item: ContentItem) -> dict[str, Any]:
    """One OpenAI content part. In a content list a `str` is text; files are `Path`s."""
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if isinstance(item, TextPart):
        return item.to_content_part()
    if isinstance(item, Mapping):
        return _encode_mapping_part(item)
    return image_content_part(item)  # type: ignore[arg-type]


def build_messages(
    messages: str | Sequence[Message],
    images: Sequence[ImageInput] | None = None,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """The `messages` array for a chat request.

    `messages` is a prompt string (one user message) or OpenAI-style message dicts whose `content`
    is a string or a list of content items (str text, TextPart, ImagePart, PIL image, bytes, Path or
    ready-made part dicts). `images` are appended, in order, to the last user message's content.
    `system`, when given, is prepended as a system message.
    """
    if isinstance(messages, str):
        built = [{"role": "user", "content": messages}]
    elif isinstance(messages, Mapping):
        raise TypeError("messages must be a prompt string or a list of message dicts, not a single dict")
    else:
        built = [_encode_message(message) for message in messages]
    if not built:
        raise ValueError("messages is empty")
    if system is not None:
        built.insert(0, {"role": "system", "content": system})
    if images:
        last_user = next((m for m in reversed(built) if m.get("role") == "user"), None)
        if last_user is None:
            raise ValueError("images= needs a user message to attach the images to")
        content = last_user["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        if parts and parts[0].get("type") == "text" and parts[0].get("text") == "":
            parts = parts[1:]
        parts.extend(image_content_part(image) for image in images)
        last_user["content"] = parts
    return built


def _encode_message(message: Message) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise TypeError(f"each message must be a dict with 'role' and 'content', got {type(message).__name__}")
    if "role" not in message:
        raise ValueError("each message needs a 'role' (system, user or assistant)")
    encoded = dict(message)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        if isinstance(content, (bytes, bytearray, memoryview, TextPart, ImagePart)) or _is_pil_image(content):
            content = [content]
        encoded["content"] = [content_part(item) for item in content]
    return encoded


def _encode_mapping_part(part: Mapping[str, Any]) -> dict[str, Any]:
    """Pass a ready-made part through, encoding an `image_url.url` that is not a URL string yet."""
    if part.get("type") == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        if url is not None and not (isinstance(url, str) and url.startswith(("data:", "http://", "https://"))):
            return {**part, "image_url": {**(image_url if isinstance(image_url, Mapping) else {}), "url": image_to_data_url(url)}}
        if isinstance(image_url, str):
            return {**part, "image_url": {"url": image_url}}
    return dict(part)


def _is_pil_image(value: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a base dependency
        return False
    return isinstance(value, Image.Image)
