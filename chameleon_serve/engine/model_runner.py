"""The only code that runs the transformer: batched prefill chunks and batched decode steps.

It owns the KV cache (preallocated for `num_slots` rows of `max_model_len` positions) and turns
scheduler batches into tensors. Nothing here knows about requests, modalities or sampling.
"""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F

from ..model.kv_cache import CacheBatch, KVCache
from ..model.transformer import Transformer
from .sequence import Sequence

PAD_TOKEN = 0  # fed in padded prefill positions; what it writes to the cache is never read
log = logging.getLogger(__name__)


def batch_buckets(max_rows: int) -> list[int]:
    """Decode batch sizes used on CUDA: powers of two up to max_rows (one CUDA graph each, later)."""
    sizes = [1]
    while sizes[-1] < max_rows:
        sizes.append(min(sizes[-1] * 2, max_rows))
    return sizes


class ModelRunner:
    def __init__(self, model: Transformer, num_slots: int, max_model_len: int, pad_batches: bool | None = None):
        param = next(model.parameters())
        self.model, self.device, self.dtype = model.fuse_projections(), param.device, param.dtype
        self.max_model_len = max_model_len
        # one extra cache row that padding rows write to, so padded batches never touch a live sequence
        self.scratch_slot = num_slots
        self.cache = KVCache.for_model(model.config, num_slots + 1, max_model_len, self.dtype, self.device)
        # On CUDA, decode batches are padded to a few fixed sizes so kernels (and later CUDA graphs)
        # see static shapes; on CPU padding would only cost time.
        pad = self.device.type == "cuda" if pad_batches is None else pad_batches
        self.buckets = batch_buckets(num_slots) if pad else None
        self.tokens_forwarded = 0  # real (unpadded) tokens pushed through the model, for tests and stats
        self.weight_layouts: dict[str, str] = {}  # role -> "[out, in]" or "[in, out]", once tuned

    @torch.inference_mode()
    def tune_weight_layouts(self, passes: int = 3) -> dict[str, str]:
        """Keeps, for each weight role, the memory order in which a one-token step's matmuls run faster.

        A decode step of one sequence is a chain of matrix-vector products that stream every weight from
        memory, so their speed is the BLAS kernel's bandwidth. It depends on the memory order: with MKL on
        the AMD EPYC CPUs we develop on, [in, out] streams the wide qkv, gate/up and lm_head weights about
        twice as fast as the [out, in] order checkpoints store, while down_proj is faster as stored. Another
        BLAS or CPU may differ, so this measures instead of assuming: each role's weights of every layer are
        timed in both orders (all layers per pass, so they come from memory as in a real step; best of
        `passes`). A role moves only when that is clearly (10%) faster, so timing noise does not flip the
        choice from one start to the next: the values never change, but the summation order does, in the
        last bits. Peak memory grows by one matrix while relaying.
        """
        for role in self.model.WEIGHT_ROLES:
            x = torch.randn(1, self.model.role_weights(role)[0].shape[1], dtype=self.dtype, device=self.device)
            as_loaded = self._time_role(role, x, passes)
            self.model.store_transposed(role, True)
            transposed = self._time_role(role, x, passes)
            keep = transposed < 0.9 * as_loaded
            if not keep:
                self.model.store_transposed(role, False)
            self.weight_layouts[role] = "[in, out]" if keep else "[out, in]"
            log.debug("%s: [out, in] %.0f us, [in, out] %.0f us", role, as_loaded * 1e6, transposed * 1e6)
        log.info("weight memory order for one-token steps: %s", self.weight_layouts)
        return self.weight_layouts

    def _time_role(self, role: str, x: torch.Tensor, passes: int) -> float:
        weights = self.model.role_weights(role)
        for w in weights:  # warm-up: first-call kernel selection
            F.linear(x, w)
        best = float("inf")
        for _ in range(passes):
            self._sync()
            t0 = time.perf_counter()
            for w in weights:
                F.linear(x, w)
            self._sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def _sync(self) -> None:
        """CUDA kernels run asynchronously: wait for them, or a timing measures only their launch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

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
        tokens = [row.tokens[row.num_cached] for row in rows]
        slots = [row.slot for row in rows]
        starts = [row.num_cached for row in rows]
        if self.buckets is not None:
            padded = next(b for b in self.buckets if b >= len(rows))
            pad = padded - len(rows)
            tokens, slots, starts = tokens + [PAD_TOKEN] * pad, slots + [self.scratch_slot] * pad, starts + [0] * pad
        where = CacheBatch.make(slots, starts, 1, self.device)
        hidden = self.model(torch.tensor(tokens, device=self.device)[:, None], self.cache, where)
        for row in rows:
            row.num_cached += 1
        self.tokens_forwarded += len(rows)
        return self.model.logits(hidden[: len(rows), -1]).float()
