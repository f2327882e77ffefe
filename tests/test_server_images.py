"""Input image checks (server/images.py): format sniffed from bytes, limits before decoding, clear errors.

No model needed: these run in milliseconds. Remote fetching is tested against a real local HTTP server.
"""
from __future__ import annotations

import asyncio
import base64
import http.server
import io
import struct
import threading
import time
import zlib

import pytest
from PIL import Image

from chameleon_serve.server.errors import APIError
from chameleon_serve.server.images import decode_data_url, load_image, open_image, sniff_format
from chameleon_serve.server.settings import Limits

PARAM = "messages[0].content[2]"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(size=(40, 30), mode="RGB") -> Image.Image:
    return Image.effect_noise(size, 50).convert(mode)


def fake_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with almost no data (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def expect_error(status: int, fn, *args, **kwargs) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args, **kwargs)
    assert info.value.status == status and info.value.detail.param == PARAM
    return info.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt):
    data = encode(noise(), fmt)
    assert sniff_format(data) == fmt
    image = open_image(data, max_pixels=10_000, param=PARAM)
    assert image.size == (40, 30) and image.mode == "RGB"


def test_gif_gives_its_first_frame():
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    assert open_image(data, max_pixels=100, param=PARAM).getpixel((0, 0))[:3] == (255, 0, 0)


def test_transparency_is_kept_for_the_tokenizer_to_blend():
    assert open_image(encode(noise(mode="RGBA"), "PNG"), max_pixels=10_000, param=PARAM).mode == "RGBA"


def test_pixel_limit_checked_from_the_header_before_decoding():
    error = expect_error(413, open_image, fake_png(5000, 4000), max_pixels=4096 * 4096, param=PARAM)
    assert "5000x4000" in error.detail.message and error.detail.type == "request_too_large"
    # far over the limit, PIL's own guard (MAX_IMAGE_PIXELS) may fire first: still a 413
    assert "pixel limit" in expect_error(413, open_image, fake_png(20000, 20000), max_pixels=4096 * 4096, param=PARAM).detail.message


def test_truncated_and_non_images_are_400():
    png = encode(noise((64, 64)), "PNG")
    expect_error(400, open_image, png[: len(png) // 2], max_pixels=10_000, param=PARAM)
    error = expect_error(400, open_image, b"hello, I am a text file\n" * 10, max_pixels=10_000, param=PARAM)
    assert "PNG, JPEG, WebP or GIF" in error.detail.message
    expect_error(400, open_image, encode(noise(), "BMP"), max_pixels=10_000, param=PARAM)  # a real image, not accepted


def test_data_url_checks():
    png = encode(noise(), "PNG")
    assert decode_data_url("data:image/jpeg;base64," + base64.b64encode(png).decode(), max_bytes=10**6, param=PARAM) == png
    expect_error(400, decode_data_url, "data:image/png;base64,***", max_bytes=10**6, param=PARAM)
    expect_error(400, decode_data_url, "data:image/png,rawbytes", max_bytes=10**6, param=PARAM)
    expect_error(400, decode_data_url, "image/png;base64,AAAA", max_bytes=10**6, param=PARAM)
    expect_error(413, decode_data_url, "data:image/png;base64," + "A" * 4000, max_bytes=1000, param=PARAM)


@pytest.fixture(scope="module")
def image_host():
    """A local HTTP server: /ok.png (a PNG), /big.png (over the byte limit), anything else 404."""
    files = {"/ok.png": encode(noise(), "PNG"), "/big.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 50_000}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/drip.png":  # one byte every 0.3 s: each read is quick, the whole is not
                png = files["/ok.png"]
                self.send_response(200)
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                for i in range(len(png)):
                    self.wfile.write(png[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.3)
                return
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def load(url: str, allow_remote: bool) -> Image.Image:
    limits = Limits(max_image_bytes=10_000, remote_image_timeout_s=5)
    return asyncio.run(load_image(url, limits=limits, allow_remote=allow_remote, param=PARAM))


def test_remote_images_only_when_allowed(image_host):
    error = expect_error(400, load, image_host + "/ok.png", allow_remote=False)
    assert "--allow-remote-images" in error.detail.message
    assert load(image_host + "/ok.png", allow_remote=True).size == (40, 30)
    expect_error(413, load, image_host + "/big.png", allow_remote=True)
    expect_error(400, load, image_host + "/missing.png", allow_remote=True)
    expect_error(400, load, "ftp://example.com/a.png", allow_remote=True)


def test_a_slow_drip_remote_image_is_cut_off_by_the_total_timeout(image_host):
    limits = Limits(max_image_bytes=10_000, remote_image_timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(APIError) as err:
        asyncio.run(load_image(image_host + "/drip.png", limits=limits, allow_remote=True, param=PARAM))
    assert err.value.status == 400 and "took longer than 1.5 s" in err.value.detail.message
    assert time.monotonic() - started < 5
