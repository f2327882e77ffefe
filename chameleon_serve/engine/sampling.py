"""Batched token selection: masking, logprobs, repetition penalty, CFG, temperature/top-k/top-p.

Every row carries its own settings and its own `torch.Generator`, so a seeded request draws the same
tokens whatever else shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .params import CFGMode, ImageParams, SamplingParams

NEG_INF = float("-inf")


@dataclass
class RowSampling:
    """How to pick the next token of one sequence."""

    params: SamplingParams
    generator: torch.Generator
    mask_row: int  # index into the modality mask table
    penalty_ids: torch.Tensor | None = None  # token ids the repetition penalty applies to


def apply_repetition_penalty(logits: torch.Tensor, rows: list[RowSampling]) -> None:
    """HF/CTRL-style: seen tokens' positive logits are divided by the penalty, negative ones multiplied."""
    for b, row in enumerate(rows):
        p = row.params.repetition_penalty
        if p == 1.0 or row.penalty_ids is None or row.penalty_ids.numel() == 0:
            continue
        seen = logits[b, row.penalty_ids]
        logits[b, row.penalty_ids] = torch.where(seen > 0, seen / p, seen * p)


def filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (already divided by temperature); top_k [B] (0 = off); top_p [B] (1 = off)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, logits.shape[-1])[:, None]
    remove = rank >= k
    probs = sorted_logits.masked_fill(remove, NEG_INF).softmax(dim=-1)
    # drop a token when the tokens ranked above it already hold top_p of the mass (keeps at least one)
    remove |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(remove, NEG_INF)
    return torch.full_like(logits, NEG_INF).scatter(-1, order, sorted_logits)


def sample(logits: torch.Tensor, rows: list[RowSampling]) -> list[int]:
    """logits [B, V] float32, already masked. Returns one token id per row."""
    greedy = [r.params.greedy for r in rows]
    if all(greedy):
        return logits.argmax(dim=-1).tolist()
    temperature = torch.tensor([r.params.temperature or 1.0 for r in rows], device=logits.device)
    scaled = logits / temperature[:, None]
    top_k = torch.tensor([r.params.top_k for r in rows], device=logits.device)
    top_p = torch.tensor([r.params.top_p for r in rows], device=logits.device)
    if bool((top_k > 0).any() or (top_p < 1.0).any()):
        scaled = filter_top_k_top_p(scaled, top_k, top_p)
    probs = scaled.softmax(dim=-1)
    # a row whose distribution is not usable (NaN/inf from extreme settings) falls back to greedy
    usable = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)
    chosen = logits.argmax(dim=-1).tolist()
    for b, row in enumerate(rows):
        if not greedy[b] and usable[b]:
            chosen[b] = int(torch.multinomial(probs[b], 1, generator=row.generator))
    return chosen


def guided_logits(rows: list[torch.Tensor], image: ImageParams) -> torch.Tensor:
    """Classifier-free guidance over a sequence's rows: [full context, (image-only context,) unconditional]."""
    if image.cfg is CFGMode.PLAIN:
        cond, uncond = rows
        return uncond + image.guidance_scale * (cond - uncond)
    cond, image_only, uncond = rows
    return uncond + image.guidance_scale_image * (image_only - uncond) + image.guidance_scale_text * (cond - image_only)


def top_logprobs(logprobs: torch.Tensor, chosen: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """logprobs [V] of one row: the chosen token's logprob and the k best alternatives."""
    best = []
    if k > 0:
        values, ids = logprobs.topk(k)
        best = list(zip(ids.tolist(), values.tolist()))
    return float(logprobs[chosen]), best
