"""Continuous batching: who runs, who waits, and what each engine step computes.

Each step is at most one prefill forward (a token budget shared by the rows that still have prompt to
cache, so a long prompt is chunked and never stalls running streams for long) and one decode forward
over every row that is ready. Requests join between steps when their cache rows are free and leave
the moment they finish or are cancelled.
"""
from __future__ import annotations

from collections import deque

from .block_manager import SlotManager
from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, num_slots: int, max_model_len: int, prefill_budget: int):
        self.slots = SlotManager(num_slots)
        self.max_model_len = max_model_len
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Moves waiting requests to running, first come first served, while their cache rows fit."""
        admitted = []
        while self.waiting and self.slots.can_allocate(self.waiting[0].slots_needed):
            seq = self.waiting.popleft()
            seq.slot, *seq.reserved_slots = self.slots.allocate(seq.slots_needed)
            seq.status = Status.RUNNING
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def remove(self, seq: Sequence) -> None:
        """Frees a request's cache rows (its guidance rows' included) and forgets it."""
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.slots.free([seq.slot, *seq.reserved_slots])
        seq.status = Status.FINISHED
        seq.guidance_rows = []

    def rows(self):
        """Every live cache row: requests and their guidance rows."""
        for seq in self.running:
            yield seq
            yield from seq.guidance_rows

    def prefill_batch(self) -> tuple[list[tuple[Sequence, int]], int]:
        """Rows with more than one uncached token, how many each caches now, and the padded length T.

        Every row but its last token gets cached (the last is fed by the decode step that samples
        after it). Rows are padded to a common T; padding writes land past a row's frontier, where
        they are never read before real tokens overwrite them, so rows must keep start + T in range.
        """
        pending = [r for r in self.rows() if r.num_uncached > 1]
        if not pending:
            return [], 0
        first = pending[0]
        T = min(first.num_uncached - 1, self.prefill_budget)
        batch = [(first, T)]
        for row in pending[1:]:
            if (len(batch) + 1) * T > self.prefill_budget or row.num_cached + T > self.max_model_len:
                break
            batch.append((row, min(row.num_uncached - 1, T)))
        return batch, T

    def decode_batch(self, next_is_forced) -> list[Sequence]:
        """Requests (with their guidance rows) that have exactly one token to feed."""
        return [seq for seq in self.running if seq.ready_to_decode(next_is_forced(seq))]

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)
