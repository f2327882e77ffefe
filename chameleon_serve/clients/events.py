"""Typed events of a streamed chat, and how to fold them back into a `ChatResponse`.

A stream yields, in order: any mix of `TextDelta` and image blocks (`ImageStarted`, zero or more
`ImageProgress`, `ImageDone`), then `Usage` (when the server reports it), then exactly one
`Finished`, which is always the last event.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, Iterable, Union

from .responses import ChatResponse, ImagePart, Part, Usage, append_text


@dataclass(frozen=True)
class TextDelta:
    """More text."""

    text: str


@dataclass(frozen=True)
class ImageStarted:
    """The model began image number `index` (0-based within the response)."""

    index: int
    width: int
    height: int
    num_tokens: int  # image tokens to come


@dataclass(frozen=True)
class ImageProgress:
    """Image `index` has `tokens_done` of `num_tokens` tokens; `preview` is a partial render when asked for."""

    index: int
    tokens_done: int
    num_tokens: int
    preview: ImagePart | None = None


@dataclass(frozen=True)
class ImageDone:
    """Image `index` is complete."""

    index: int
    image: ImagePart


@dataclass(frozen=True)
class Finished:
    """The answer is complete: `finish_reason` is "stop" or "length". Always the last event."""

    finish_reason: str


# `Usage` (from responses.py) is itself an event: the stream's token counts, just before `Finished`.
StreamEvent = Union[TextDelta, ImageStarted, ImageProgress, ImageDone, Usage, Finished]


class ResponseAssembler:
    """Folds stream events, one at a time, into the `ChatResponse` that `chat()` would have returned."""

    def __init__(self, *, id: str | None = None, model: str | None = None) -> None:
        self.id = id
        self.model = model
        self.parts: list[Part] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            append_text(self.parts, event.text)
        elif isinstance(event, ImageDone):
            self.parts.append(event.image)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish_reason = event.finish_reason
        # ImageStarted and ImageProgress do not change the final answer.

    def response(self) -> ChatResponse:
        return ChatResponse(
            parts=list(self.parts), finish_reason=self.finish_reason, usage=self.usage, id=self.id, model=self.model
        )


def collect_stream(events: Iterable[StreamEvent]) -> ChatResponse:
    """Consume a stream of events and return the same `ChatResponse` as a non-streamed `chat()`.

    Given a `ChatStream` (what `Client.stream` returns), the response also carries its id and model.
    """
    assembler = ResponseAssembler()
    for event in events:
        assembler.add(event)
    # A ChatStream learns the response id and model from the chunks, so read them after consuming.
    assembler.id = getattr(events, "id", None)
    assembler.model = getattr(events, "model", None)
    return assembler.response()


async def acollect_stream(events: AsyncIterable[StreamEvent]) -> ChatResponse:
    """The async twin of `collect_stream`, for `AsyncClient.stream`."""
    assembler = ResponseAssembler()
    async for event in events:
        assembler.add(event)
    assembler.id = getattr(events, "id", None)
    assembler.model = getattr(events, "model", None)
    return assembler.response()
