"""What a caller asks the engine for: one `GenerationRequest` per response.

Plain dataclasses with validation, no tensors: the HTTP layer builds them, the engine reads them.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum


class InvalidRequest(ValueError):
    """The request cannot be served as asked; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


MAX_TOP_K = 1 << 20
GREEDY_TEMPERATURE = 0.01
MIN_SEED, MAX_SEED = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed accepts


class OutputMode(str, Enum):
    TEXT = "text"  # never begins an image
    IMAGE = "image"  # begin-image forced at the start; stops after exactly one image
    INTERLEAVED = "interleaved"  # the model chooses, within the image cap and the token budget


class CFGMode(str, Enum):
    NONE = "none"
    PLAIN = "plain"  # two rows: u + g * (c - u)            (Lumina-mGPT)
    TEXT_IMAGE = "text_image"  # three rows: u + g_img*(i - u) + g_txt*(c - i)   (Meta / Anole)


@dataclass
class SamplingParams:
    """Sampling for one modality. temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k
    repetition_penalty: float = 1.0  # applied to text tokens only (1.0 = off)

    def validate(self, prefix: str) -> None:
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequest("temperature must be between 0 and 100", f"{prefix}temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest("top_p must be in (0, 1]", f"{prefix}top_p")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top_k must be between 0 (off) and {MAX_TOP_K}", f"{prefix}top_k")
        if not 0.01 <= self.repetition_penalty <= 10.0:
            raise InvalidRequest("repetition_penalty must be between 0.01 and 10", f"{prefix}repetition_penalty")

    @property
    def greedy(self) -> bool:
        # below GREEDY_TEMPERATURE, logits / temperature overflows float32: that is greedy anyway
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


@dataclass
class ImageParams:
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, top_p=0.9))
    cfg: CFGMode = CFGMode.NONE
    guidance_scale_text: float = 3.0  # TEXT_IMAGE mode
    guidance_scale_image: float = 1.2  # TEXT_IMAGE mode
    guidance_scale: float = 4.0  # PLAIN mode
    max_images: int = 4  # cap per response (IMAGE mode always makes exactly one)
    preview_every: int = 0  # emit a partial preview PNG every K image tokens; 0 = never

    def validate(self) -> None:
        self.sampling.validate("image.")
        if self.max_images < 0:
            raise InvalidRequest("image.max_images must be >= 0", "image.max_images")
        if self.preview_every < 0:
            raise InvalidRequest("image.preview_every must be >= 0", "image.preview_every")
        for name in ("guidance_scale_text", "guidance_scale_image", "guidance_scale"):
            if not -100.0 <= getattr(self, name) <= 100.0:
                raise InvalidRequest(f"image.{name} must be between -100 and 100", f"image.{name}")


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    output: OutputMode = OutputMode.INTERLEAVED
    text: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, top_p=0.9))
    image: ImageParams = field(default_factory=ImageParams)
    stop: list[str] = field(default_factory=list)  # stop strings (text mode); not included in the output
    seed: int | None = None  # same request + same seed = same output when run alone
    logprobs: bool = False  # chosen-token logprob for text tokens
    top_logprobs: int = 0  # and the top-k alternatives (0..20)
    ignore_eos: bool = False  # keep going past `</s>` / end-of-turn (benchmarks)
    min_tokens: int = 0  # `</s>` / end-of-turn forbidden before this many tokens
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def validate(self) -> None:
        if not self.prompt_tokens:
            raise InvalidRequest("the prompt is empty", "messages")
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", "max_tokens")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequest("min_tokens must be between 0 and max_tokens", "min_tokens")
        if not 0 <= self.top_logprobs <= 20:
            raise InvalidRequest("top_logprobs must be between 0 and 20", "top_logprobs")
        if self.seed is not None and not MIN_SEED <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be a 64-bit integer ({MIN_SEED} to {MAX_SEED})", "seed")
        if len(self.stop) > 8 or any(not s for s in self.stop):
            raise InvalidRequest("stop takes at most 8 non-empty strings", "stop")
        self.text.validate("")
        self.image.validate()
