"""Input images: data URL (or, when the operator allows it, http(s) URL) -> checked PIL image.

The order of checks is what keeps hostile input cheap:
1. size of the base64 text before decoding it (image bytes limit);
2. the real format, sniffed from the first bytes (the MIME type the URL claims is not trusted);
3. width x height from the header, before any pixel is decoded (decompression bombs);
4. the full decode, where a truncated file fails.
Every failure is an `APIError` naming the content part (`messages[i].content[j]`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io

import httpx
from PIL import Image
from starlette.concurrency import run_in_threadpool

from chameleon_serve.server.errors import bad_request, too_large
from chameleon_serve.server.settings import Limits

# magic bytes -> format name; the only formats we accept
_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
]
ACCEPTED_FORMATS = "PNG, JPEG, WebP or GIF"


def sniff_format(data: bytes) -> str | None:
    """The image format from its first bytes, or None when it is none we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def decode_data_url(url: str, *, max_bytes: int, param: str) -> bytes:
    """`data:[<mime>][;base64],<payload>` -> the file's bytes."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise bad_request("Malformed data URL: expected `data:image/<type>;base64,<data>`.", param, "invalid_image_url")
    if not header.endswith(";base64"):
        raise bad_request("Image data URLs must be base64-encoded (`;base64,`).", param, "invalid_image_url")
    # 4 base64 chars carry 3 bytes: refuse before allocating the decoded buffer
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise too_large(f"Image is larger than the limit of {max_bytes} bytes.", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("Image data is not valid base64.", param, "invalid_base64") from None
    if len(data) > max_bytes:
        raise too_large(f"Image is {len(data)} bytes; the limit is {max_bytes}.", param)
    return data


async def fetch_remote(url: str, *, max_bytes: int, timeout_s: float, param: str) -> bytes:
    """Download an http(s) image with a byte cap (counted while streaming) and a total timeout.

    httpx's timeout bounds each read; `wait_for` bounds the whole download, so a host that drips one
    byte at a time cannot hold the request open.
    """
    try:
        return await asyncio.wait_for(_download(url, max_bytes, timeout_s, param), timeout_s)
    except asyncio.TimeoutError:
        raise bad_request(f"Fetching the image took longer than {timeout_s:g} s.", param, "image_fetch_failed") from None


async def _download(url: str, max_bytes: int, timeout_s: float, param: str) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True, max_redirects=3) as client:
            async with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise bad_request(f"Fetching the image failed: HTTP {resp.status_code}.", param, "image_fetch_failed")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise too_large(f"Remote image is {declared} bytes; the limit is {max_bytes}.", param)
                chunks, total = [], 0
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise too_large(f"Remote image is larger than the limit of {max_bytes} bytes.", param)
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise bad_request(f"Fetching the image failed: {type(exc).__name__}.", param, "image_fetch_failed") from None


def open_image(data: bytes, *, max_pixels: int, param: str) -> Image.Image:
    """Bytes -> a fully decoded RGB/RGBA image (GIF: first frame). CPU-bound: call from a thread."""
    kind = sniff_format(data)
    if kind is None:
        raise bad_request(f"Not a {ACCEPTED_FORMATS} image.", param, "invalid_image")
    try:
        img = Image.open(io.BytesIO(data), formats=[kind])  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own guard, at twice its MAX_IMAGE_PIXELS
        raise too_large(f"Image is over the pixel limit of {max_pixels} ({exc}).", param) from None
    except Exception:
        raise bad_request(f"Cannot read this {kind} image (corrupt header).", param, "invalid_image") from None
    width, height = img.size
    if width * height > max_pixels:
        raise too_large(f"Image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}.", param)
    if width == 0 or height == 0:
        raise bad_request("Image has no pixels.", param, "invalid_image")
    try:
        img.seek(0)  # GIF / animated WebP: the first frame
        img.load()
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    except Exception as exc:  # truncated or corrupt pixel data: PIL raises OSError, SyntaxError, ValueError...
        raise bad_request(f"Cannot decode this {kind} image ({exc}).", param, "invalid_image") from None
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def configure_pil(max_pixels: int) -> None:
    """PIL's own bomb guard (a warning above the limit, an error above twice it), as a second line
    behind the header check in `open_image`, which already refuses anything over the limit."""
    Image.MAX_IMAGE_PIXELS = max_pixels



async def load_image(url: str, *, limits: Limits, allow_remote: bool, param: str) -> Image.Image:
    """An `image_url.url` (data URL, or http(s) when allowed) -> a checked, decoded image."""
    if url.startswith("data:"):
        data = decode_data_url(url, max_bytes=limits.max_image_bytes, param=param)
    elif url.startswith(("http://", "https://")):
        if not allow_remote:
            raise bad_request(
                "Remote image URLs are not fetched by this server; send the image inline as a "
                "data URL (data:image/png;base64,...). Operators can allow fetching with --allow-remote-images.",
                param,
                "remote_images_disabled",
            )
        data = await fetch_remote(url, max_bytes=limits.max_image_bytes, timeout_s=limits.remote_image_timeout_s, param=param)
    else:
        raise bad_request("An image URL must be a data URL (data:image/png;base64,...).", param, "invalid_image_url")
    # decoding is CPU work: keep it off the event loop
    return await run_in_threadpool(open_image, data, max_pixels=limits.max_image_pixels, param=param)


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
