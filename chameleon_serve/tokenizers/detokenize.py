"""Streaming detokenization: text deltas as tokens arrive, never a broken or later-revised character.

Decoding token by token is wrong twice over: a token can hold part of a UTF-8 character (an emoji is
often 2-4 byte tokens), and some decoders render a token differently depending on its neighbours (e.g.
sentencepiece strips the space of a sequence's first word). So each step decodes a short window of
recent tokens with and without the new one and emits only the difference, and holds the text back while
it ends in U+FFFD (an unfinished character). The window starts at the last point that was emitted
cleanly, so each step costs O(window), not O(tokens so far).
"""
from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """push(id) -> newly final text; flush() -> whatever was held back. Deltas concatenate to decode(ids)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer  # anything with decode(ids, skip_special_tokens=...) -> str
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        # ids[prefix_offset:read_offset] is the context already emitted; ids[read_offset:] is pending.
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith(REPLACEMENT_CHAR) and not final):
            return ""  # nothing new yet, or the last character is still incomplete
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text[len(prefix_text) :]

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._emit(final=False)

    def flush(self) -> str:
        """Emit what was held back (e.g. bytes that never completed a character) at the end of a stream."""
        return self._emit(final=True)

    @property
    def text_so_far(self) -> str:
        """The full decoded text (O(n): for tests and final answers, not per token)."""
        return self._decode(self.ids)
