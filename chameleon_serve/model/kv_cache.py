"""A preallocated key/value cache addressed by (slot, position).

Each live sequence owns one slot (a row) for its whole life: a modality switch only appends,
speculative decoding appends a window and then simply forgets the rejected tail (the sequence's
length is the only truth; stale entries past it are never attended to and get overwritten).

The engine decides which slot belongs to whom; this file only stores tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """keys/values[layer]: [max_slots, num_kv_heads, max_len, head_dim] (a slot's prefix is what attention reads)."""

    def __init__(
        self,
        num_layers: int,
        max_slots: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (max_slots, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_slots = max_slots
        self.max_len = max_len

    @classmethod
    def for_model(cls, config, max_slots: int, max_len: int, dtype=torch.float32, device="cpu") -> "KVCache":
        return cls(
            config.num_hidden_layers, max_slots, max_len, config.num_key_value_heads, config.head_dim, dtype, device
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@dataclass
class CacheBatch:
    """Where a forward step reads and writes the cache.

    Every batch row appends the same number T of new tokens (decode: T=1; prefill chunk or
    speculative window: T>1). Row b's new tokens sit at positions start[b] .. start[b]+T-1 of
    slot slots[b]; they attend to everything before them in that slot and causally to each other.
    """

    slots: torch.Tensor  # [B] long, cache row of each batch row
    start: torch.Tensor  # [B] long, tokens already cached for that row
    kv_len: int  # max(start) + T: how many cache positions the step reads (host int, no sync)
    contiguous_slots: slice | None = None  # slots == range(a, b): read the cache as a view, not a gather
    same_start: bool = False  # every row starts at the same position: a decode step needs no mask

    @classmethod
    def make(cls, slots: list[int], start: list[int], num_new: int, device="cpu") -> "CacheBatch":
        contiguous = None
        if slots == list(range(slots[0], slots[0] + len(slots))):
            contiguous = slice(slots[0], slots[0] + len(slots))
        return cls(
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            start=torch.tensor(start, dtype=torch.long, device=device),
            kv_len=max(start) + num_new,
            contiguous_slots=contiguous,
            same_start=len(set(start)) == 1,
        )

    def positions(self, num_new: int) -> torch.Tensor:
        """[B, T] absolute positions of the new tokens (also their RoPE positions)."""
        return self.start[:, None] + torch.arange(num_new, device=self.start.device)
