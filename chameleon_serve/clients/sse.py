"""An incremental decoder for `text/event-stream` (Server-Sent Events) byte streams.

Bytes arrive in arbitrary pieces: a piece may end inside a UTF-8 character, inside a line, or
between the `\\r` and `\\n` of a line ending. `SSEDecoder.feed` returns the events completed so far;
`SSEDecoder.close` returns what is left when the stream ends. Follows the WHATWG event-stream
parsing rules (fields `event`, `data`, `id`, `retry`; comments; `\\r\\n`, `\\r` or `\\n` line ends),
except that a final event without its closing blank line is still delivered.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEMessage:
    """One dispatched event: `event` is "message" unless the stream named it."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._data_lines: list[str] = []
        self._event_type = ""
        self._last_event_id: str | None = None
        self.retry_ms: int | None = None  # the stream's reconnection time, when it sent one

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        """Add bytes; return the events they complete."""
        self._buffer += self._utf8.decode(chunk)
        if not self._started and self._buffer:
            self._buffer = self._buffer.removeprefix("\ufeff")
            self._started = bool(self._buffer)
        return self._read_lines(final=False)

    def close(self) -> list[SSEMessage]:
        """The stream ended: return any events still pending (at most one)."""
        self._buffer += self._utf8.decode(b"", final=True)
        messages = self._read_lines(final=True)
        if self._buffer:
            messages.extend(self._process_line(self._buffer))
            self._buffer = ""
        messages.extend(self._dispatch())
        return messages

    def _read_lines(self, *, final: bool) -> list[SSEMessage]:
        messages: list[SSEMessage] = []
        position = 0
        while True:
            match = _LINE_END.search(self._buffer, position)
            if match is None:
                break
            # A lone "\r" at the very end may be the first half of "\r\n": wait for more bytes.
            if match.group() == "\r" and match.end() == len(self._buffer) and not final:
                break
            messages.extend(self._process_line(self._buffer[position : match.start()]))
            position = match.end()
        self._buffer = self._buffer[position:]
        return messages

    def _process_line(self, line: str) -> list[SSEMessage]:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return []  # a comment (often a keep-alive)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_lines.append(value)
        elif name == "event":
            self._event_type = value
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return []

    def _dispatch(self) -> list[SSEMessage]:
        if not self._data_lines:
            self._event_type = ""
            return []
        message = SSEMessage(
            data="\n".join(self._data_lines), event=self._event_type or "message", id=self._last_event_id
        )
        self._data_lines = []
        self._event_type = ""
        return [message]
