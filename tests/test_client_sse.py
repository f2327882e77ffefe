"""The client's event-stream decoding: SSE framing, then chat chunks into typed events.

Byte streams here are written the way the server writes them (docs/protocol.md) and are fed to the
decoder in every possible split, because the network delivers bytes in arbitrary pieces.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from chameleon_serve.clients import (
    APIConnectionError,
    BadRequestError,
    Finished,
    ImageDone,
    ImagePart,
    ImageProgress,
    ImageStarted,
    ServiceUnavailableError,
    TextDelta,
    TextPart,
    Usage,
    collect_stream,
)
from chameleon_serve.clients.protocol import ChunkTranslator, parse_chat_completion
from chameleon_serve.clients.sse import SSEDecoder, SSEMessage


def decode_in_pieces(stream: bytes, piece_size: int) -> list[SSEMessage]:
    decoder = SSEDecoder()
    messages: list[SSEMessage] = []
    for start in range(0, len(stream), piece_size):
        messages += decoder.feed(stream[start : start + piece_size])
    return messages + decoder.close()


def decode_split_at(stream: bytes, position: int) -> list[SSEMessage]:
    decoder = SSEDecoder()
    return decoder.feed(stream[:position]) + decoder.feed(stream[position:]) + decoder.close()


# ------------------------------------------------------------------------------------------ SSE framing


def test_data_events_survive_every_split_point_including_inside_utf8_and_crlf():
    stream = 'data: {"text": "héllo 🐈"}\r\n\r\n: keep-alive comment\r\ndata: second\r\n\r\n'.encode()
    expected = [SSEMessage('{"text": "héllo 🐈"}'), SSEMessage("second")]
    for position in range(len(stream) + 1):
        assert decode_split_at(stream, position) == expected, f"split at byte {position}"
    assert decode_in_pieces(stream, 1) == expected


def test_lf_cr_and_crlf_line_endings_are_equivalent():
    for newline in ("\n", "\r", "\r\n"):
        stream = f"data: a{newline}{newline}data: b{newline}{newline}".encode()
        assert decode_in_pieces(stream, 1) == [SSEMessage("a"), SSEMessage("b")], repr(newline)


def test_multi_line_data_is_joined_with_newlines_and_event_names_are_kept():
    stream = b"event: image_generation.completed\ndata: line one\ndata:line two\nid: 7\n\n"
    assert decode_in_pieces(stream, 3) == [
        SSEMessage("line one\nline two", event="image_generation.completed", id="7")
    ]


def test_comments_blank_events_and_a_leading_bom_produce_nothing_extra():
    stream = "\ufeff: hello\n\n\nretry: 1500\n\ndata: x\n\n".encode()
    decoder = SSEDecoder()
    assert decoder.feed(stream) + decoder.close() == [SSEMessage("x")]
    assert decoder.retry_ms == 1500


def test_a_final_event_without_its_blank_line_is_still_delivered():
    assert decode_in_pieces(b"data: [DONE]", 4) == [SSEMessage("[DONE]")]


# ------------------------------------------------------------------------------------------ chat chunks


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return ImagePart(png).data_url


def sse(payload: object) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "tiny",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": None,
    }


FINAL_PNG = png_bytes((200, 10, 10))
PREVIEW_PNG = png_bytes((90, 5, 5))
USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 23,
    "total_tokens": 28,
    "completion_tokens_details": {"text_tokens": 4, "image_tokens": 19},
}

# An interleaved answer exactly as docs/protocol.md orders it: role, text, image start, progress
# (one without and one with a preview), the image, more text, finish, usage, [DONE].
INTERLEAVED_STREAM = b"".join(
    [
        sse(chunk({"role": "assistant", "content": ""})),
        sse(chunk({"content": "A cat"})),
        sse(chunk({"content": ":"})),
        sse(chunk({"image_progress": {"index": 0, "tokens_done": 0, "num_tokens": 16, "width": 16, "height": 16}})),
        sse(chunk({"image_progress": {"index": 0, "tokens_done": 4, "num_tokens": 16, "width": 16, "height": 16}})),
        sse(chunk({"image_progress": {"index": 0, "tokens_done": 8, "num_tokens": 16, "width": 16, "height": 16,
                                      "preview_url": data_url(PREVIEW_PNG)}})),  # fmt: skip
        sse(chunk({"images": [{"type": "image_url", "index": 0, "image_url": {"url": data_url(FINAL_PNG)}}]})),
        sse(chunk({"content": " purrs."})),
        sse(chunk({}, finish_reason="stop")),
        sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "tiny", "choices": [], "usage": USAGE}),
        sse("[DONE]"),
    ]
)

EXPECTED_EVENTS = [
    TextDelta("A cat"),
    TextDelta(":"),
    ImageStarted(index=0, width=16, height=16, num_tokens=16),
    ImageProgress(index=0, tokens_done=4, num_tokens=16, preview=None),
    ImageProgress(index=0, tokens_done=8, num_tokens=16, preview=ImagePart(PREVIEW_PNG)),
    ImageDone(index=0, image=ImagePart(FINAL_PNG)),
    TextDelta(" purrs."),
    Usage(prompt_tokens=5, completion_tokens=23, text_tokens=4, image_tokens=19),
    Finished("stop"),
]


def translate(stream: bytes, piece_size: int) -> list:
    translator = ChunkTranslator()
    events = []
    for start in range(0, len(stream), piece_size):
        events += translator.feed(stream[start : start + piece_size])
    return events + translator.close()


@pytest.mark.parametrize("piece_size", [1, 7, 4096, 1 << 20])
def test_an_interleaved_stream_becomes_ordered_typed_events_with_usage_before_finished(piece_size):
    assert translate(INTERLEAVED_STREAM, piece_size) == EXPECTED_EVENTS


def test_a_collected_stream_equals_the_same_answer_sent_whole():
    whole = parse_chat_completion(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": "A cat:"},
                            {"type": "image_url", "image_url": {"url": data_url(FINAL_PNG)}},
                            {"type": "text", "text": " purrs."},
                        ],
                    },
                }
            ],
            "usage": USAGE,
        }
    )
    collected = collect_stream(EXPECTED_EVENTS)
    assert collected.parts == whole.parts == [TextPart("A cat:"), ImagePart(FINAL_PNG), TextPart(" purrs.")]
    assert (collected.text, collected.finish_reason, collected.usage) == (whole.text, "stop", whole.usage)
    assert whole.usage.total_tokens == 28 and whole.images[0].size == (16, 16)


def test_a_text_only_answer_arrives_as_a_plain_string_and_parses_to_one_text_part():
    whole = parse_chat_completion(
        {"choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "just words"}}]}
    )
    assert whole.parts == [TextPart("just words")] and whole.finish_reason == "length" and whole.usage is None


def test_an_error_sent_after_the_stream_started_raises_the_matching_exception():
    stream = sse(chunk({"content": "partial"})) + sse(
        {"error": {"message": "engine is shutting down", "type": "service_unavailable", "param": None, "code": None}}
    ) + sse("[DONE]")
    translator = ChunkTranslator()
    with pytest.raises(ServiceUnavailableError, match="engine is shutting down") as raised:
        translator.feed(stream)
    assert raised.value.status_code is None and raised.value.type == "service_unavailable"

    bad = sse({"error": {"message": "bad image", "type": "invalid_request_error", "param": "messages", "code": None}})
    with pytest.raises(BadRequestError) as raised:
        ChunkTranslator().feed(bad)
    assert raised.value.param == "messages"


def test_a_stream_cut_off_before_its_finish_raises_a_connection_error():
    cut = INTERLEAVED_STREAM[: INTERLEAVED_STREAM.index(b"purrs")]
    translator = ChunkTranslator()
    translator.feed(cut)
    with pytest.raises(APIConnectionError, match="before the answer was finished"):
        translator.close()


def test_a_stream_without_done_but_with_its_finish_chunk_still_finishes():
    stream = INTERLEAVED_STREAM[: INTERLEAVED_STREAM.index(b"data: [DONE]")]
    assert translate(stream, 64) == EXPECTED_EVENTS
