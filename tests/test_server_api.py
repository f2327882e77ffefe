"""The HTTP API against a real `chameleon-serve serve` process on 127.0.0.1 (tiny random checkpoint).

Random weights make random text, so these tests check structure, ordering and determinism (same seed,
streamed or not, gives the same answer), never content.
"""
from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image

from chameleon_serve.testing import SMALL_VQ, write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

API_KEY = "server-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SIDE = SMALL_VQ.resolution  # the tiny model's image size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    args = ["--model", str(ckpt), "--api-key", API_KEY, "--max-images-per-request", "2", "--max-body-mb", "1"]
    with live_server(*args, api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def text_only_server(tmp_path_factory):
    """A checkpoint without a VQ decoder (as HF's converter writes them): it reads images, writes only text."""
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "textonly", with_vq_decoder=False)
    # keys from the environment this time (comma-separated), instead of --api-key
    with live_server("--model", str(ckpt), env={"CHAMELEON_SERVE_API_KEYS": f"first-key, {API_KEY}"}, api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def text_only_http(text_only_server):
    with httpx.Client(base_url=text_only_server.url, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def chat(http: httpx.Client, **body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "Describe a cat."}])
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse_data(http: httpx.Client, path: str, body: dict) -> list[str]:
    """The `data:` payloads of a streamed response, in order."""
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]


def png_of(data_url: str) -> Image.Image:
    assert data_url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def assemble_stream(chunks: list[str]) -> tuple[list[tuple[str, str]], dict]:
    """Streamed chat chunks -> ordered parts [("text", s) | ("image", url)] and the parsed chunks."""
    assert chunks[-1] == "[DONE]"
    parsed = [json.loads(c) for c in chunks[:-1]]
    parts: list[tuple[str, str]] = []
    for chunk in parsed:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                if parts and parts[-1][0] == "text":
                    parts[-1] = ("text", parts[-1][1] + delta["content"])
                else:
                    parts.append(("text", delta["content"]))
            for image in delta.get("images", []):
                parts.append(("image", image["image_url"]["url"]))
    return parts, parsed


def whole_parts(content: str | list) -> list[tuple[str, str]]:
    if isinstance(content, str):
        return [("text", content)] if content else []
    return [("text", p["text"]) if p["type"] == "text" else ("image", p["image_url"]["url"]) for p in content]


# ---------------------------------------------------------------------------------------------- the official SDK


def test_openai_sdk_streams_chat_with_usage(sdk, server, http):
    name = sdk.models.list().data[0].id
    stream = sdk.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello there"}], stream=True,
        stream_options={"include_usage": True}, max_tokens=40, seed=7, extra_body={"modalities": ["text"]},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert finish in (["stop"], ["length"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 1 <= usage.completion_tokens <= 40
    assert usage.completion_tokens_details.image_tokens == 0  # text only was asked for

    whole = sdk.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hello there"}], max_tokens=40, seed=7, extra_body={"modalities": ["text"]}
    )
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == usage.completion_tokens


def test_openai_sdk_images_generate_returns_png(sdk):
    result = sdk.images.generate(model=sdk.models.list().data[0].id, prompt="a red square", response_format="b64_json", n=2)
    assert len(result.data) == 2
    for item in result.data:
        image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert image.format == "PNG" and image.size == (SIDE, SIDE)
    assert result.usage.output_tokens >= 2 * SMALL_VQ.image_tokens  # two images' worth of codes


def test_openai_sdk_images_stream_partial_then_completed(sdk):
    events = list(sdk.images.generate(model=sdk.models.list().data[0].id, prompt="a boat", stream=True, partial_images=2))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        assert Image.open(io.BytesIO(base64.b64decode(e.b64_json))).size == (SIDE, SIDE)


def test_openai_sdk_maps_errors(server):
    bad_key = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as info:
        good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {"name": "f"}}])
    assert info.value.body["param"] == "tools"


# ---------------------------------------------------------------------------------------------- determinism and order


def test_interleaved_stream_equals_whole_answer_in_order(http):
    """Same seed: the streamed and non-streamed answers hold the same text and image bytes, in the same order."""
    body = {"messages": [{"role": "user", "content": "Show me a picture and tell me about it."}], "max_tokens": 420}
    for seed in range(12):  # find a seed whose answer has text, then an image, then text
        whole = chat(http, **body, seed=seed)
        parts = whole_parts(whole["choices"][0]["message"]["content"])
        kinds = [k for k, _ in parts]
        if "image" in kinds and kinds[0] == "text" and kinds[-1] == "text":
            break
    else:
        pytest.fail("no seed in 0..11 gave text, image, text")
    usage = whole["usage"]
    assert usage["completion_tokens_details"]["image_tokens"] >= SMALL_VQ.image_tokens  # codes of one image
    assert usage["completion_tokens"] == usage["completion_tokens_details"]["image_tokens"] + usage["completion_tokens_details"]["text_tokens"]
    for kind, value in parts:
        if kind == "image":
            assert png_of(value).size == (SIDE, SIDE)

    streamed, parsed = assemble_stream(sse_data(http, "/v1/chat/completions", {**body, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}))
    assert streamed == parts  # same text, same PNG bytes, same order
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"] == usage
    assert parsed[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    # an image's progress chunks come before its image chunk, starting at tokens_done 0
    progress = [c["choices"][0]["delta"]["image_progress"] for c in parsed[:-1] if "image_progress" in c["choices"][0]["delta"]]
    assert progress[0]["tokens_done"] == 0 and progress[0]["width"] == SIDE
    assert [p["tokens_done"] for p in progress] == sorted(p["tokens_done"] for p in progress)
    images = [c["choices"][0]["delta"]["images"][0] for c in parsed[:-1] if "images" in c["choices"][0]["delta"]]
    assert [i["index"] for i in images] == list(range(len(images)))


def test_image_only_modality_and_previews(http):
    body = {"messages": [{"role": "user", "content": "a tree"}], "modalities": ["image"], "seed": 3}
    whole = chat(http, **body)
    content = whole["choices"][0]["message"]["content"]
    assert [p["type"] for p in content] == ["image_url"]
    preview_every = 64
    chunks = sse_data(http, "/v1/chat/completions", {**body, "stream": True, "image": {"preview_every": preview_every}})
    parts, parsed = assemble_stream(chunks)
    assert parts == [("image", content[0]["image_url"]["url"])]
    previews = [c["choices"][0]["delta"]["image_progress"] for c in parsed if "image_progress" in c["choices"][0]["delta"]]
    with_preview = [p for p in previews if "preview_url" in p]
    assert with_preview and all(p["tokens_done"] % preview_every == 0 for p in with_preview)
    assert png_of(with_preview[0]["preview_url"]).size == (SIDE, SIDE)


def test_image_input_is_read(http):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(buffer, format="JPEG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()  # claimed type is wrong on purpose: bytes decide
    answer = chat(http, messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}], max_tokens=5, modalities=["text"])
    # the image became boi + codes + eoi in the prompt
    assert answer["usage"]["prompt_tokens"] > SMALL_VQ.image_tokens


def test_completions_stream_equals_whole_with_logprobs(http):
    body = {"prompt": "The quick brown", "max_tokens": 20, "seed": 5, "logprobs": 2, "ignore_eos": True}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    whole = r.json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 20
    assert len(choice["logprobs"]["tokens"]) == 20 and all(len(t) <= 2 for t in choice["logprobs"]["top_logprobs"])
    chunks = sse_data(http, "/v1/completions", {**body, "stream": True})
    assert chunks[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in map(json.loads, chunks[:-1]))
    assert text == choice["text"]
    ids = http.post("/v1/completions", json={"prompt": [0, 5, 6, 7], "max_tokens": 3}).json()
    assert ids["usage"]["prompt_tokens"] == 4


def test_chat_logprobs(http):
    answer = chat(http, max_tokens=6, logprobs=True, top_logprobs=3, modalities=["text"], seed=1)
    entries = answer["choices"][0]["logprobs"]["content"]
    assert 1 <= len(entries) <= answer["usage"]["completion_tokens"]  # one per text token (not for the end token)
    assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 3 for e in entries)


def test_tiny_temperature_is_greedy(http):
    """A temperature too small to divide logits by safely samples greedily instead of failing."""
    body = {"max_tokens": 8, "modalities": ["text"]}
    greedy = chat(http, **body, temperature=0, seed=1)["choices"][0]["message"]["content"]
    assert chat(http, **body, temperature=1e-300, seed=2)["choices"][0]["message"]["content"] == greedy


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_is_read_as_json_whatever_its_content_type(http, content_type):
    """`curl -d` without -H 'Content-Type: application/json' still works."""
    body = json.dumps({"messages": HELLO, "max_tokens": 3, "modalities": ["text"], "seed": 1}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = http.post("/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 3


def test_harmless_openai_fields_are_accepted(http):
    chat(http, max_tokens=3, user="u1", metadata={"a": "b"}, store=False, parallel_tool_calls=False,
         frequency_penalty=0, presence_penalty=0, service_tier="auto", n=1, tool_choice="none", response_format={"type": "text"})


# ---------------------------------------------------------------------------------------------- bad input


def png_bytes(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width=20000, height=20000) -> bytes:
    """A PNG whose header claims width x height (a few bytes: what a decompression bomb looks like)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def with_image(url: str, count: int = 1) -> dict:
    parts = [{"type": "text", "text": "look"}] + [{"type": "image_url", "image_url": {"url": url}}] * count
    return {"messages": [{"role": "user", "content": parts}], "max_tokens": 4}


HELLO = [{"role": "user", "content": "hi"}]
BAD_INPUTS = [
    # (name, path, body (dict, or raw bytes), status, error type, param)
    ("malformed json", "/v1/chat/completions", b'{"messages": [', 400, "invalid_request_error", None),
    ("body not an object", "/v1/chat/completions", b"[1, 2]", 400, "invalid_request_error", None),
    ("messages wrong type", "/v1/chat/completions", {"messages": "hi"}, 400, "invalid_request_error", "messages"),
    ("content wrong type", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request_error", "messages[0].content"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, 400, "invalid_request_error", "messages"),
    ("missing messages", "/v1/chat/completions", {"model": "tiny"}, 400, "invalid_request_error", "messages"),
    ("unknown role", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_request_error", "messages[0].role"),
    ("unknown part type", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "invalid_request_error", "messages[0].content[0]"),
    ("bad base64", "/v1/chat/completions", with_image("data:image/png;base64,@@@notbase64@@@"), 400, "invalid_request_error", "messages[0].content[1]"),
    ("truncated png", "/v1/chat/completions", with_image(data_url(png_bytes((64, 64))[:300])), 400, "invalid_request_error", "messages[0].content[1]"),
    ("20000x20000 png", "/v1/chat/completions", with_image(data_url(huge_png_header())), 413, "request_too_large", "messages[0].content[1]"),
    ("text file as image", "/v1/chat/completions", with_image(data_url(b"just some text, not pixels\n" * 4)), 400, "invalid_request_error", "messages[0].content[1]"),
    ("remote image url", "/v1/chat/completions", with_image("https://example.com/cat.png"), 400, "invalid_request_error", "messages[0].content[1]"),
    ("too many images", "/v1/chat/completions", with_image(data_url(png_bytes()), count=3), 400, "invalid_request_error", "messages"),
    ("too long prompt", "/v1/chat/completions", {"messages": [{"role": "user", "content": "lorem ipsum " * 400}]}, 400, "invalid_request_error", "messages"),
    ("max_tokens 0", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens"),
    ("max_tokens as a string", "/v1/chat/completions", {"messages": HELLO, "max_tokens": "5"}, 400, "invalid_request_error", "max_tokens"),
    ("max_tokens as a bool", "/v1/chat/completions", {"messages": HELLO, "max_tokens": True}, 400, "invalid_request_error", "max_tokens"),
    ("stream as a string", "/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, 400, "invalid_request_error", "stream"),
    ("max_tokens huge", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 10**9}, 400, "invalid_request_error", "max_tokens"),
    ("max_tokens over context", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 5000}, 400, "invalid_request_error", "max_tokens"),
    ("unknown modality", "/v1/chat/completions", {"messages": HELLO, "modalities": ["audio"]}, 400, "invalid_request_error", "modalities[0]"),
    ("tools", "/v1/chat/completions", {"messages": HELLO, "tools": [{"type": "function"}]}, 400, "invalid_request_error", "tools"),
    ("n > 1", "/v1/chat/completions", {"messages": HELLO, "n": 2}, 400, "invalid_request_error", "n"),
    ("json_schema", "/v1/chat/completions", {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {}}}, 400, "invalid_request_error", "response_format.type"),
    ("audio", "/v1/chat/completions", {"messages": HELLO, "audio": {"voice": "alloy"}}, 400, "invalid_request_error", "audio"),
    ("unknown field", "/v1/chat/completions", {"messages": HELLO, "temprature": 0.5}, 400, "invalid_request_error", "temprature"),
    ("temperature range", "/v1/chat/completions", {"messages": HELLO, "temperature": -1}, 400, "invalid_request_error", "temperature"),
    ("seed over int64", "/v1/chat/completions", {"messages": HELLO, "seed": 10**23}, 400, "invalid_request_error", "seed"),
    ("top_k over int64", "/v1/chat/completions", {"messages": HELLO, "top_k": 10**20}, 400, "invalid_request_error", "top_k"),
    ("tiny repetition_penalty", "/v1/chat/completions", {"messages": HELLO, "repetition_penalty": 1e-300}, 400, "invalid_request_error", "repetition_penalty"),
    ("image option range", "/v1/chat/completions", {"messages": HELLO, "image": {"top_p": 0}}, 400, "invalid_request_error", "image.top_p"),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, 404, "not_found_error", "model"),
    ("body over limit", "/v1/chat/completions", b'{"messages": "' + b"x" * (1024 * 1024 + 10) + b'"}', 413, "request_too_large", None),
    ("echo", "/v1/completions", {"prompt": "a", "echo": True}, 400, "invalid_request_error", "echo"),
    ("token id out of vocab", "/v1/completions", {"prompt": [1, 10**6]}, 400, "invalid_request_error", "prompt[1]"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "invalid_request_error", "prompt"),
    ("wrong image size", "/v1/images/generations", {"prompt": "x", "size": "1024x1024"}, 400, "invalid_request_error", "size"),
    ("url response format", "/v1/images/generations", {"prompt": "x", "response_format": "url"}, 400, "invalid_request_error", "response_format"),
    ("too many images asked", "/v1/images/generations", {"prompt": "x", "n": 9}, 400, "invalid_request_error", "n"),
    ("unknown route", "/v1/embeddings", {"input": "x"}, 404, "not_found_error", None),
    ("wrong method (GET)", "/v1/chat/completions", None, 405, "invalid_request_error", None),
]
# image output asked of a checkpoint that cannot decode images (served by `text_only_server`)
TEXT_ONLY_BAD_INPUTS = [
    ("image modality on text-only", "/v1/chat/completions", {"messages": HELLO, "modalities": ["image"]}, 400, "invalid_request_error", "modalities"),
    ("interleaved on text-only", "/v1/chat/completions", {"messages": HELLO, "modalities": ["text", "image"]}, 400, "invalid_request_error", "modalities"),
    ("images API on text-only", "/v1/images/generations", {"prompt": "a cat"}, 400, "invalid_request_error", None),
]


ALL_BAD_INPUTS = [("server", *row) for row in BAD_INPUTS] + [("text_only", *row) for row in TEXT_ONLY_BAD_INPUTS]


@pytest.mark.parametrize("which,name,path,body,status,error_type,param", ALL_BAD_INPUTS, ids=[row[1] for row in ALL_BAD_INPUTS])
def test_bad_input_gets_clear_error(request, which, name, path, body, status, error_type, param):
    http = request.getfixturevalue("http" if which == "server" else "text_only_http")
    if body is None:
        r = http.get(path)
    elif isinstance(body, bytes):
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["param"] == param, error
    assert error["message"]
    # the server is unharmed: a normal request works right after
    assert chat(http, max_tokens=2, modalities=["text"])["object"] == "chat.completion"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}], ids=["missing", "wrong", "not bearer"])
def test_auth_required_except_health(server, headers):
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200


def test_huge_declared_body_refused_before_reading(server):
    """A Content-Length over the limit is refused at once, without the body being sent."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {10**10}\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(4096):  # the server answers and closes without waiting for the body
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "request_too_large" in answer


def test_chunked_body_counted_while_read(http):
    """Without a Content-Length the body is counted as it arrives and refused once over the limit."""

    def body():
        yield b'{"messages": "'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB in all, the limit is 1 MiB
        yield b'"}'

    r = http.post("/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


# ---------------------------------------------------------------------------------------------- other routes


def test_models_and_openapi(http, server):
    models = http.get("/v1/models").json()
    card = models["data"][0]
    assert card["id"] == "tiny" and card["output_modalities"] == ["text", "image"] and card["image_size"] == f"{SIDE}x{SIDE}"
    assert http.get("/v1/models/tiny").status_code == 200
    assert http.get("/v1/models/other").status_code == 404
    spec = http.get("/openapi.json").json()
    chat_op = spec["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "401", "413", "429", "503"} <= set(chat_op["responses"]) and "422" not in chat_op["responses"]
    assert "text/event-stream" in chat_op["responses"]["200"]["content"]
    assert "ChatCompletionChunk" in spec["components"]["schemas"]
    assert http.get("/docs").status_code == 200
    assert http.get("/ready").json()["status"] == "ready"


def test_metrics_report_requests_tokens_and_latency(http):
    chat(http, max_tokens=4, modalities=["text"])
    assert http.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    text = http.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values["chameleon_requests_running"] == 0 and values["chameleon_requests_waiting"] == 0
    assert values["chameleon_time_to_first_token_seconds_count"] >= 1
    assert values["chameleon_e2e_request_latency_seconds_count"] >= 1
    assert values["chameleon_inter_token_latency_seconds_count"] >= 1
    assert values["chameleon_prompt_tokens_total"] > 0
    assert values['chameleon_generation_tokens_total{modality="text"}'] > 0
    assert 'chameleon_images_generated_total' in values
    assert values['chameleon_request_errors_total{type="invalid_request_error"}'] >= 1
    assert values['chameleon_http_requests_total{route="/v1/chat/completions",status="200"}'] >= 1
