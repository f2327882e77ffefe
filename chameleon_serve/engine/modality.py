"""The modality automaton: which tokens a sequence may produce next.

Text mode allows ordinary text tokens, the stop tokens (`</s>`, end-of-turn) and, while an image still
fits, begin-image (`<racm3:break>`). Begin-image switches to image mode, which follows the image
layout's *plan*: a list of steps that are either "sample an image token" or "force token X"
(Chameleon: N image tokens then a forced `<eoss>`; Lumina-mGPT: forced size tokens, rows of image
tokens each closed by a forced newline token, then `<eoss>`). After the plan, back to text.

All masks are precomputed once as rows of one [K, vocab] tensor; a batch picks its rows with a single
index, so rows in different modes share one masking operation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch

from .params import OutputMode

SAMPLE_IMAGE_TOKEN = -1  # a plan step that samples an image token; any other value is a forced token id


@dataclass(frozen=True)
class ImageLayout:
    """The tokens of one image block that follow begin-image."""

    plan: tuple[int, ...]
    width: int
    height: int

    @classmethod
    def chameleon(cls, num_image_tokens: int, end_of_image: int, width: int, height: int) -> "ImageLayout":
        return cls((SAMPLE_IMAGE_TOKEN,) * num_image_tokens + (end_of_image,), width, height)

    @property
    def num_image_tokens(self) -> int:
        return sum(1 for step in self.plan if step == SAMPLE_IMAGE_TOKEN)

    @property
    def block_len(self) -> int:
        """Tokens an image costs in the sequence: begin-image plus the plan."""
        return 1 + len(self.plan)


class Mask(IntEnum):
    """Row index into `ModalityMasks.table`."""

    TEXT = 0  # text, stop tokens, begin-image
    TEXT_NO_IMAGE = 1  # text, stop tokens
    TEXT_NO_STOP = 2  # text, begin-image (min_tokens / ignore_eos)
    TEXT_ONLY = 3  # text
    IMAGE = 4  # image tokens only


class ModalityMasks:
    """[len(Mask), vocab_size] bool table of allowed tokens, on the engine's device."""

    def __init__(self, vocab_size: int, text_tokens: torch.Tensor, image_tokens: torch.Tensor,
                 stop_tokens: list[int], begin_image: int, device="cpu"):
        def row(*parts) -> torch.Tensor:
            allowed = torch.zeros(vocab_size, dtype=torch.bool)
            for p in parts:
                allowed |= p
            return allowed

        n = min(vocab_size, text_tokens.numel())
        text = torch.zeros(vocab_size, dtype=torch.bool)
        text[:n] = text_tokens[:n]
        image = torch.zeros(vocab_size, dtype=torch.bool)
        image[:n] = image_tokens[:n]
        stop = torch.zeros(vocab_size, dtype=torch.bool)
        stop[stop_tokens] = True
        boi = torch.zeros(vocab_size, dtype=torch.bool)
        boi[begin_image] = True
        self.table = torch.stack(
            [row(text, stop, boi), row(text, stop), row(text, boi), row(text), row(image)]
        ).to(device)
        self.blocked = ~self.table  # what masking fills with -inf, kept so a step does not negate again

    def blocked_rows(self, mask_rows: list[int]) -> torch.Tensor:
        """[B, vocab] (or [1, vocab] when every row has the same mask: a view that broadcasts, no gather)."""
        first = mask_rows[0]
        if all(r == first for r in mask_rows):
            return self.blocked[first : first + 1]
        return self.blocked[mask_rows]


@dataclass
class ModalityState:
    """Where one sequence is in the automaton. Pure Python: cheap to step per token."""

    output: OutputMode
    layout: ImageLayout
    max_images: int
    in_image: bool = False
    plan_pos: int = 0  # next step of the layout's plan while in_image
    images_done: int = 0
    image_tokens_done: int = 0  # sampled image tokens in the current image
    finished_image_only: bool = False  # IMAGE output: the one image is complete
    started: bool = field(default=False)

    def forced_token(self, begin_image: int) -> int | None:
        """The next token when the automaton leaves no choice, else None."""
        if self.output is OutputMode.IMAGE and not self.started:
            return begin_image
        if self.in_image and self.layout.plan[self.plan_pos] != SAMPLE_IMAGE_TOKEN:
            return self.layout.plan[self.plan_pos]
        return None

    def mask(self, room: int, may_stop: bool) -> Mask:
        """Which mask applies to the next sampled token; `room` = tokens the sequence may still add."""
        if self.in_image:
            return Mask.IMAGE
        may_image = (
            self.output is OutputMode.INTERLEAVED
            and self.images_done < self.max_images
            and room >= self.layout.block_len
        )
        if may_image:
            return Mask.TEXT if may_stop else Mask.TEXT_NO_STOP
        return Mask.TEXT_NO_IMAGE if may_stop else Mask.TEXT_ONLY

    def advance(self, token: int, begin_image: int) -> str | None:
        """Steps the automaton past `token`. Returns "image_start", "image_token", "image_end" or None (text)."""
        self.started = True
        if not self.in_image:
            if token == begin_image:
                self.in_image, self.plan_pos, self.image_tokens_done = True, 0, 0
                return "image_start"
            return None
        step = self.layout.plan[self.plan_pos]
        self.plan_pos += 1
        if step == SAMPLE_IMAGE_TOKEN:
            self.image_tokens_done += 1
        if self.plan_pos == len(self.layout.plan):
            self.in_image = False
            self.images_done += 1
            self.finished_image_only = self.output is OutputMode.IMAGE
            return "image_end"
        return "image_token" if step == SAMPLE_IMAGE_TOKEN else "image_forced"
