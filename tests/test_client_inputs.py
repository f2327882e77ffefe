"""What the client sends: images of every accepted kind become data URLs, messages become the protocol's
`messages` array, options become the request body. And what it hands back: ImagePart behaves like a PNG file."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from chameleon_serve.clients import ChatResponse, ImageOptions, ImagePart, TextPart, image_to_data_url
from chameleon_serve.clients.inputs import build_messages, sniff_image_mime_type
from chameleon_serve.clients.protocol import build_chat_request, build_image_request, resolve_api_key, resolve_base_url


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def decode_data_url(url: str) -> tuple[str, bytes]:
    header, data = url.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(data)


PICTURE = Image.new("RGB", (12, 8), (10, 120, 240))


@pytest.mark.parametrize(
    "format, mime_type",
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_bytes_the_server_reads_are_sent_unchanged_with_their_sniffed_mime_type(format, mime_type):
    data = encoded(PICTURE, format)
    assert sniff_image_mime_type(data) == mime_type
    assert decode_data_url(image_to_data_url(data)) == (mime_type, data)


def test_other_formats_are_converted_to_png():
    mime_type, data = decode_data_url(image_to_data_url(encoded(PICTURE, "BMP")))
    assert mime_type == "image/png"
    assert Image.open(io.BytesIO(data)).size == (12, 8)


def test_a_pil_image_is_sent_as_png_even_in_a_mode_png_cannot_store():
    for image in (PICTURE, PICTURE.convert("CMYK"), PICTURE.convert("L")):
        mime_type, data = decode_data_url(image_to_data_url(image))
        assert mime_type == "image/png"
        assert Image.open(io.BytesIO(data)).size == (12, 8)


def test_file_paths_as_str_or_path_are_read(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded(PICTURE, "JPEG"))
    assert image_to_data_url(path) == image_to_data_url(str(path)) == image_to_data_url(path.read_bytes())


def test_urls_pass_through_and_non_images_are_refused_clearly(tmp_path: Path):
    assert image_to_data_url("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"
    assert image_to_data_url("https://example.com/cat.png") == "https://example.com/cat.png"
    with pytest.raises(ValueError, match="not an image"):
        image_to_data_url(b"definitely not an image")
    with pytest.raises(FileNotFoundError):
        image_to_data_url(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="cannot send int"):
        image_to_data_url(42)  # type: ignore[arg-type]


def test_a_prompt_with_images_becomes_one_user_message_with_the_text_then_the_images_in_order():
    png = encoded(PICTURE, "PNG")
    messages = build_messages("compare these", images=[png, PICTURE], system="be brief")
    assert messages[0] == {"role": "system", "content": "be brief"}
    user = messages[1]
    assert user["role"] == "user"
    assert [part["type"] for part in user["content"]] == ["text", "image_url", "image_url"]
    assert user["content"][0]["text"] == "compare these"
    assert decode_data_url(user["content"][1]["image_url"]["url"]) == ("image/png", png)


def test_openai_style_message_dicts_may_hold_pil_images_bytes_and_parts_from_an_earlier_answer():
    earlier = ChatResponse(parts=[TextPart("here:"), ImagePart(encoded(PICTURE, "PNG"))], finish_reason="stop")
    messages = build_messages(
        [
            {"role": "user", "content": "draw"},
            earlier.to_message(),
            {"role": "user", "content": ["now this one", PICTURE, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        ]
    )
    assert messages[1]["content"][0] == {"type": "text", "text": "here:"}
    assert messages[1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [part["type"] for part in messages[2]["content"]] == ["text", "image_url", "image_url"]
    assert messages[2]["content"][2]["image_url"]["url"] == "data:image/png;base64,AAAA"


def test_images_need_a_user_message_and_messages_cannot_be_empty():
    with pytest.raises(ValueError, match="user message"):
        build_messages([{"role": "system", "content": "x"}], images=[PICTURE])
    with pytest.raises(ValueError, match="empty"):
        build_messages([])


def test_the_chat_body_sends_only_what_was_asked_and_streams_with_usage():
    spec = build_chat_request(
        "hi", stream=True, modalities="interleaved", seed=3, stop="END", image=ImageOptions(cfg="plain", preview_every=8)
    )
    assert (spec.method, spec.path, spec.stream) == ("POST", "/v1/chat/completions", True)
    assert spec.json == {
        "messages": [{"role": "user", "content": "hi"}],
        "modalities": ["text", "image"],
        "seed": 3,
        "stop": ["END"],
        "image": {"cfg": "plain", "preview_every": 8},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert build_chat_request("hi", stream=False, modalities=["text"]).json == {
        "messages": [{"role": "user", "content": "hi"}],
        "modalities": ["text"],
    }
    with pytest.raises(ValueError, match="modalities"):
        build_chat_request("hi", stream=False, modalities="video")


def test_the_image_generation_body():
    assert build_image_request("a cat", size=(64, 64), n=2).json == {
        "prompt": "a cat",
        "n": 2,
        "response_format": "b64_json",
        "size": "64x64",
    }


def test_url_and_key_come_from_arguments_then_the_environment_then_the_default(monkeypatch):
    monkeypatch.delenv("CHAMELEON_SERVE_URL", raising=False)
    monkeypatch.delenv("CHAMELEON_SERVE_API_KEY", raising=False)
    assert resolve_base_url(None) == "http://127.0.0.1:8000"
    assert resolve_api_key(None) is None
    monkeypatch.setenv("CHAMELEON_SERVE_URL", "http://example.test:9000/")
    monkeypatch.setenv("CHAMELEON_SERVE_API_KEY", "from-env")
    assert resolve_base_url(None) == "http://example.test:9000"
    assert resolve_api_key(None) == "from-env"
    assert resolve_base_url("localhost:1234") == "http://localhost:1234"
    assert resolve_api_key("explicit") == "explicit"


def test_an_image_part_is_a_png_with_a_size_a_pil_view_and_a_save(tmp_path: Path):
    png = encoded(PICTURE, "PNG")
    part = ImagePart.from_data_url(image_to_data_url(png))
    assert part.png == png
    assert part.size == (12, 8) == part.image.size
    assert part.image.getpixel((0, 0)) == (10, 120, 240)
    saved = part.save(tmp_path / "nested" / "out.png")
    assert saved.read_bytes() == png
    with pytest.raises(ValueError, match="PNG signature"):
        ImagePart(encoded(PICTURE, "JPEG"))


def test_a_response_joins_its_text_and_lists_its_images_in_order():
    first, second = ImagePart(encoded(PICTURE, "PNG")), ImagePart(encoded(PICTURE.rotate(90), "PNG"))
    answer = ChatResponse(parts=[TextPart("a"), first, TextPart("b"), second], finish_reason="stop")
    assert answer.text == "ab"
    assert answer.images == [first, second]
    assert ChatResponse(parts=[TextPart("only text")], finish_reason="stop").to_message() == {
        "role": "assistant",
        "content": "only text",
    }


def test_a_timeout_in_seconds_bounds_answers_but_connecting_fails_within_10_seconds():
    from chameleon_serve.clients import Client

    with Client("http://127.0.0.1:1", timeout=600) as client:
        assert client.timeout.read == 600 and client.timeout.connect == 10
    with Client("http://127.0.0.1:1", timeout=2) as client:
        assert client.timeout.read == 2 and client.timeout.connect == 2
