"""One sequence in the engine: its tokens, its cache slot, its automaton and its output state.

A request is one `Sequence`. While it draws an image with classifier-free guidance it also owns
short-lived *guidance rows* (`Sequence` objects with `parent` set): the image-only and unconditional
contexts, which decode in lock-step with it and are freed when the image ends.

The invariant the scheduler relies on: a row's first `num_cached` tokens are in its cache slot, and
a row is ready to decode when exactly one token is not cached yet.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from enum import Enum

import torch

from .events import Error, Event, Finished
from .modality import ModalityState
from .params import CFGMode, GenerationRequest


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    tokens: list[int]
    request: GenerationRequest | None = None  # None for guidance rows
    handle: "RequestHandle | None" = None
    parent: "Sequence | None" = None
    prompt_len: int = 0
    num_cached: int = 0
    slot: int = -1
    reserved_slots: list[int] = field(default_factory=list)  # cache rows held for guidance rows
    status: Status = Status.WAITING
    automaton: ModalityState | None = None
    generator: torch.Generator | None = None
    guidance_rows: list["Sequence"] = field(default_factory=list)
    # output state
    text_tokens: int = 0
    image_tokens: int = 0  # image codes plus begin/end markers and forced layout tokens
    image_codes: list[int] = field(default_factory=list)  # BPE ids of the image being drawn
    pending_text: str = ""  # detokenized text held back while it may still become a stop string
    seen_text_ids: set[int] = field(default_factory=set)  # for the repetition penalty
    detokenizer: object | None = None
    cancelled: bool = False

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def num_uncached(self) -> int:
        return len(self.tokens) - self.num_cached

    def ready_to_decode(self, next_is_forced: bool) -> bool:
        """One token to feed, and (unless the next token is forced) guidance rows caught up too."""
        if self.num_uncached != 1:
            return False
        return next_is_forced or all(row.num_uncached == 1 for row in self.guidance_rows)

    @property
    def slots_needed(self) -> int:
        """Cache rows this request holds while running: its own plus its guidance rows'."""
        cfg = self.request.image.cfg if self.request is not None else CFGMode.NONE
        return 1 + {CFGMode.NONE: 0, CFGMode.PLAIN: 1, CFGMode.TEXT_IMAGE: 2}[cfg]


_TERMINAL = (Finished, Error)


class RequestHandle:
    """The caller's side of a request: its events, in order, and a way to cancel it.

    Events are delivered from the engine's threads; a sync caller iterates the handle, an asyncio
    caller iterates `stream()`, which is woken through its own event loop (no thread per waiter).
    """

    def __init__(self, request_id: str, cancel_fn):
        self.request_id = request_id
        self._cancel_fn = cancel_fn
        self._lock = threading.Lock()
        self._sync: queue.SimpleQueue = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async: asyncio.Queue | None = None
        self.done = False

    def deliver(self, event: Event) -> None:
        with self._lock:
            if self._loop is None:
                self._sync.put(event)
                return
            loop, target = self._loop, self._async
        try:
            loop.call_soon_threadsafe(target.put_nowait, event)
        except RuntimeError:  # the caller's event loop is gone: nobody is listening
            pass

    def cancel(self) -> None:
        if not self.done:
            self._cancel_fn(self.request_id)

    def __iter__(self):
        while True:
            event = self._sync.get()
            yield event
            if isinstance(event, _TERMINAL):
                self.done = True
                return

    async def stream(self):
        with self._lock:
            self._loop, self._async = asyncio.get_running_loop(), asyncio.Queue()
            early = []
            while not self._sync.empty():
                early.append(self._sync.get())
        for event in early:
            yield event
            if isinstance(event, _TERMINAL):
                self.done = True
                return
        while True:
            event = await self._async.get()
            yield event
            if isinstance(event, _TERMINAL):
                self.done = True
                return

    def result(self) -> list[Event]:
        """Blocks until the request ends; all its events."""
        return list(self)
