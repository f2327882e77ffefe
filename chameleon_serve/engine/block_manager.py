"""KV-cache slot bookkeeping: which cache row belongs to which sequence.

The cache is preallocated (max_sequences rows of max_model_len positions each), so memory is bounded
by configuration and a request either gets its rows or waits. A request reserves every row it may
need up front (its CFG rows included), so a running request can never stall for lack of cache.
"""
from __future__ import annotations


class SlotManager:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out low slots first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} cache slots with {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def free(self, slots: list[int]) -> None:
        for s in slots:
            if s in self._free or not 0 <= s < self.num_slots:
                raise RuntimeError(f"cache slot {s} freed twice or out of range")
        self._free.extend(sorted(slots, reverse=True))
        self._free.sort(reverse=True)
