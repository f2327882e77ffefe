"""The client against a live server on 127.0.0.1 serving a tiny random checkpoint.

Specifies what a caller can rely on: the four ways to ask (sync/async x whole/streamed) give the same
ordered parts for the same seed; images are PNGs of the model's size; previews come when asked for;
every server error arrives as its typed exception. (The CLI against a live server: test_client_cli.py.)
"""
from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from chameleon_serve.clients import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ChatResponse,
    Client,
    Finished,
    ImageDone,
    ImageOptions,
    ImagePart,
    ImageProgress,
    ImageStarted,
    NotFoundError,
    RequestTooLargeError,
    ServiceUnavailableError,
    TextDelta,
    TextPart,
    Usage,
    acollect_stream,
)
from chameleon_serve.testing import SMALL_VQ, write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

IMAGE_SIZE = (SMALL_VQ.resolution, SMALL_VQ.resolution)
API_KEY = "client-test-key"
MAX_IMAGE_PIXELS = 200 * 200  # a small limit, so a 413 needs no huge test image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # Room for three prompt images of SMALL_VQ.image_tokens each.
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def server_url(checkpoint: Path) -> Iterator[str]:
    args = ["--model", str(checkpoint), "--api-key", API_KEY, "--max-image-pixels", str(MAX_IMAGE_PIXELS)]
    with live_server(*args, api_key=API_KEY) as server:
        yield server.url


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch) -> None:
    """Clients (and CLI subprocesses) find the key where users put it: $CHAMELEON_SERVE_API_KEY."""
    monkeypatch.setenv("CHAMELEON_SERVE_API_KEY", API_KEY)


def ask_four_ways(url: str, prompt: str, **options) -> list[ChatResponse]:
    """The same request sent whole and streamed, with the sync and the async client."""
    with Client(url) as client:
        sync_whole = client.chat(prompt, **options)
        with client.stream(prompt, **options) as events:
            sync_streamed = events.collect()

    async def ask_async() -> tuple[ChatResponse, ChatResponse]:
        async with AsyncClient(url) as client:
            whole = await client.chat(prompt, **options)
            streamed = await acollect_stream(client.stream(prompt, **options))
            return whole, streamed

    return [sync_whole, sync_streamed, *asyncio.run(ask_async())]


def assert_same_answer(answers: list[ChatResponse]) -> None:
    first = answers[0]
    for other in answers[1:]:
        assert other.parts == first.parts
        assert other.finish_reason == first.finish_reason
        assert other.usage == first.usage


# ------------------------------------------------------------------------------------------ answers


def test_text_answers_are_identical_sync_async_whole_and_streamed_for_one_seed(server_url):
    answers = ask_four_ways(server_url, "Hello, who are you?", modalities="text", max_tokens=24, seed=5, temperature=1.0)
    assert_same_answer(answers)
    first = answers[0]
    assert all(isinstance(part, TextPart) for part in first.parts)
    assert first.finish_reason in ("stop", "length")
    assert first.usage.completion_tokens >= 1 and first.usage.image_tokens == 0
    assert first.usage.text_tokens == first.usage.completion_tokens


def test_image_answers_are_identical_four_ways_and_are_pngs_of_the_models_size(server_url, tmp_path: Path):
    answers = ask_four_ways(server_url, "Draw a cat.", modalities="image", seed=9)
    assert_same_answer(answers)
    (image,) = answers[0].images
    assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert image.size == IMAGE_SIZE == image.image.size
    saved = image.save(tmp_path / "cat.png")
    with Image.open(saved) as reopened:
        assert reopened.format == "PNG" and reopened.size == IMAGE_SIZE
    assert answers[0].usage.image_tokens >= SMALL_VQ.image_tokens


def test_interleaved_answers_keep_text_and_images_in_order_four_ways(server_url):
    prompt, options = "Tell me and show me.", {"modalities": "interleaved", "max_tokens": 300}
    # Random weights: find a seed whose answer mixes text and an image (most seeds give text only).
    with Client(server_url) as client:
        seed = next(
            (seed for seed in range(1, 16) if len(client.chat(prompt, seed=seed, **options).parts) >= 3),
            None,
        )
    assert seed is not None, "no seed in 1..15 gave text, an image and more text"
    answers = ask_four_ways(server_url, prompt, seed=seed, **options)
    assert_same_answer(answers)
    kinds = [type(part) for part in answers[0].parts]
    assert ImagePart in kinds and TextPart in kinds
    assert all(not (a is TextPart and b is TextPart) for a, b in zip(kinds, kinds[1:]))  # text runs are merged
    assert answers[0].usage.text_tokens + answers[0].usage.image_tokens == answers[0].usage.completion_tokens


def test_a_stream_reports_an_image_start_progress_previews_and_the_image_in_order(server_url):
    with Client(server_url) as client:
        events = list(client.stream("Draw a house.", modalities="image", seed=3, image=ImageOptions(preview_every=64)))
    kinds = [type(event) for event in events]
    assert kinds[0] is ImageStarted and kinds[-2:] == [Usage, Finished]
    started = events[0]
    assert (started.index, started.width, started.height, started.num_tokens) == (0, *IMAGE_SIZE, SMALL_VQ.image_tokens)
    progress = [event for event in events if isinstance(event, ImageProgress)]
    previews = [event.preview for event in progress if event.preview is not None]
    assert len(previews) >= SMALL_VQ.image_tokens // 64 - 1
    assert all(preview.size == IMAGE_SIZE for preview in previews)
    assert [event.tokens_done for event in progress] == sorted(event.tokens_done for event in progress)
    (done,) = [event for event in events if isinstance(event, ImageDone)]
    assert done.index == 0 and done.image.size == IMAGE_SIZE
    assert kinds.index(ImageDone) > max(i for i, kind in enumerate(kinds) if kind is ImageProgress)
    assert not any(isinstance(event, TextDelta) for event in events)


def test_no_previews_unless_asked(server_url):
    with Client(server_url) as client:
        events = list(client.stream("Draw a house.", modalities="image", seed=3))
    assert all(event.preview is None for event in events if isinstance(event, ImageProgress))


def test_images_sent_in_the_prompt_are_accepted_as_pil_bytes_and_paths(server_url, tmp_path: Path):
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    path = tmp_path / "in.jpg"
    picture.save(path, format="JPEG")
    buffer = io.BytesIO()
    picture.save(buffer, format="WEBP")
    with Client(server_url) as client:
        answer = client.chat("Describe these.", images=[picture, buffer.getvalue(), path], modalities="text", max_tokens=4, seed=1)
    assert answer.finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 3 * SMALL_VQ.image_tokens  # the three images were tokenized


def test_generate_image_models_health_and_ready(server_url):
    with Client(server_url) as client:
        images = client.generate_image("a red square", n=2)
        assert len(images) == 2 and all(image.size == IMAGE_SIZE for image in images)
        assert client.generate_image("a red square", size=IMAGE_SIZE)[0].size == IMAGE_SIZE
        (model,) = client.models()
        assert model.id
        assert client.health() and client.ready()


# ------------------------------------------------------------------------------------------ errors


def test_a_bad_value_is_a_bad_request_naming_the_field(server_url):
    with Client(server_url) as client, pytest.raises(BadRequestError) as raised:
        client.chat("hi", temperature=-1.0)
    error = raised.value
    assert error.status_code == 400 and error.type == "invalid_request_error"
    assert error.param is not None and "temperature" in error.param
    assert error.message


def test_a_bad_request_is_raised_from_a_stream_before_any_event(server_url):
    with Client(server_url) as client, pytest.raises(BadRequestError):
        next(iter(client.stream("hi", image=ImageOptions(cfg="sometimes"))))


def test_an_unknown_model_is_not_found(server_url):
    with Client(server_url) as client, pytest.raises(NotFoundError) as raised:
        client.chat("hi", model="no-such-model")
    assert raised.value.status_code == 404 and raised.value.type == "not_found_error"


def test_an_image_over_the_pixel_limit_is_too_large(server_url):
    huge = Image.new("RGB", (201, 200))  # one column over the server's --max-image-pixels
    with Client(server_url) as client, pytest.raises(RequestTooLargeError) as raised:
        client.chat("what is this?", images=[huge], modalities="text", max_tokens=2)
    assert raised.value.status_code == 413 and raised.value.type == "request_too_large"


def test_a_wrong_or_missing_key_is_an_authentication_error(server_url, monkeypatch):
    monkeypatch.delenv("CHAMELEON_SERVE_API_KEY")
    for key in (None, "wrong-key"):
        with Client(server_url, api_key=key) as client:
            with pytest.raises(AuthenticationError) as raised:
                client.chat("hi", max_tokens=2)
            assert client.health()  # /health needs no key
        assert raised.value.status_code == 401 and raised.value.type == "authentication_error"
        assert raised.value.message


def test_a_loading_server_is_not_ready_and_answers_503(checkpoint: Path):
    with live_server("--model", str(checkpoint), "--load-delay", "60", wait_ready=False) as server:
        with Client(server.url, max_retries=1, retry_backoff=0.05) as client:
            assert client.health() and not client.ready()
            with pytest.raises(ServiceUnavailableError) as raised:
                client.chat("hi", max_tokens=2)
        assert raised.value.status_code == 503 and raised.value.retry_after is not None
