"""The only code that runs the transformer: batched prefill chunks and batched decode steps.

It owns the KV cache (preallocated for `num_slots` rows of `max_model_len` positions) and turns
scheduler batches into tensors. Nothing here knows about requests, modalities or sampling.
"""
from __future__ import annotations

import torch

from ..model.kv_cache import CacheBatch, KVCache
from ..model.transformer import Transformer
from .sequence import Sequence

PAD_TOKEN = 0  # fed in padded prefill positions; what it writes to the cache is never read


class ModelRunner:
    def __init__(self, model: Transformer, num_slots: int, max_model_len: int):
        param = next(model.parameters())
        self.model, self.device, self.dtype = model, param.device, param.dtype
        self.max_model_len = max_model_len
        self.cache = KVCache.for_model(model.config, num_slots, max_model_len, self.dtype, self.device)
        self.tokens_forwarded = 0  # real (unpadded) tokens pushed through the model, for tests and stats

    @torch.inference_mode()
    def prefill(self, batch: list[tuple[Sequence, int]], T: int) -> None:
        """Caches the next n tokens of each row (padded to T); no logits are computed."""
        tokens = [row.tokens[row.num_cached : row.num_cached + n] + [PAD_TOKEN] * (T - n) for row, n in batch]
        where = CacheBatch.make([row.slot for row, _ in batch], [row.num_cached for row, _ in batch], T, self.device)
        self.model(torch.tensor(tokens, device=self.device), self.cache, where)
        for row, n in batch:
            row.num_cached += n
            self.tokens_forwarded += n

    @torch.inference_mode()
    def decode(self, rows: list[Sequence]) -> torch.Tensor:
        """Feeds each row its one uncached token; returns next-token logits [B, vocab] in float32."""
        tokens = torch.tensor([[row.tokens[row.num_cached]] for row in rows], device=self.device)
        where = CacheBatch.make([row.slot for row in rows], [row.num_cached for row in rows], 1, self.device)
        hidden = self.model(tokens, self.cache, where)
        for row in rows:
            row.num_cached += 1
        self.tokens_forwarded += len(rows)
        return self.model.logits(hidden[:, -1]).float()
