"""The HTTP API as pydantic models: these classes ARE the API documentation served at /docs.

Requests follow OpenAI's Chat Completions, Completions and Images APIs (docs/protocol.md). Field policy:
- supported fields are declared with their range;
- fields OpenAI clients commonly send that cannot change our answer (`user`, `metadata`, `store`,
  `service_tier`, `parallel_tool_calls`, a zero `frequency_penalty`/`presence_penalty`, an empty
  `logit_bias`, `tool_choice: "none"`, `response_format: {"type": "text"}`) are accepted and ignored;
- OpenAI features we cannot honour (`tools`, `functions`, `audio`, `n` > 1, JSON response formats, ...)
  are declared too, so a request using them gets a 400 saying why instead of a silently wrong answer;
- anything else is refused as an unrecognized argument (as OpenAI does), which catches typos.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class Strict(BaseModel):
    """Request models refuse unknown fields (400 "Unrecognized request argument supplied") and values of the
    wrong JSON type (`"stream": "yes"`, `"max_tokens": "5"` or `true` are 400s, not silently converted)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _unsupported(value: Any, name: str, why: str, allowed: tuple[Any, ...] = (None,)) -> Any:
    if value not in allowed:
        raise ValueError(f"`{name}` is not supported by this server: {why}")
    return value


# ---------------------------------------------------------------------------------------------- shared


ModelName = Annotated[
    str | None,
    Field(description="The served model, as listed by GET /v1/models. Omitted = the served model; another name is a 404."),
]

StopField = Annotated[
    str | list[str] | None,
    Field(description="Up to 8 strings; text generation stops before any of them (not included in the output)."),
]


Temperature = Annotated[
    float | None, Field(ge=0, le=2, description="0 (or anything below 0.01, which sampling cannot tell apart) = greedy.")
]
TopK = Annotated[int | None, Field(ge=0, le=1_000_000, description="Top-k, 0 = off; above the vocabulary size = off.")]
RepetitionPenalty = Annotated[float | None, Field(ge=0.1, le=10, description="Extension: text repetition penalty, 1 = off.")]


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="Send a last chunk with `choices: []` and the `usage` of the request.")


class CompletionTokensDetails(BaseModel):
    text_tokens: int = Field(description="Text tokens generated.")
    image_tokens: int = Field(description="Image tokens generated, begin/end-of-image markers included.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="All generated tokens: text and image.")
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = Field(description="One entry per generated text token (image tokens have none).")


class _PenaltiesAndIgnored(Strict):
    """OpenAI fields that we accept only with a value that changes nothing, or ignore outright."""

    frequency_penalty: float | None = Field(None, description="Only 0 (use `repetition_penalty`).")
    presence_penalty: float | None = Field(None, description="Only 0 (use `repetition_penalty`).")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty.")
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _zero_penalty(cls, v: float | None, info: Any) -> float | None:
        return _unsupported(v, info.field_name, "use `repetition_penalty` instead.", (None, 0, 0.0))

    @field_validator("logit_bias")
    @classmethod
    def _empty_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v:
            raise ValueError("`logit_bias` is not supported by this server.")
        return v


# ---------------------------------------------------------------------------------------------- chat


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str = Field(
        description="A data URL (`data:image/png;base64,...`; PNG, JPEG, WebP or GIF, sniffed from the bytes). "
        "http(s) URLs only when the server runs with --allow-remote-images."
    )
    detail: Literal["auto", "low", "high"] | None = Field(None, description="Accepted and ignored: images are always VQ-encoded at the model's size.")


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "text_part", "image_url": "image_url_part"}.get(kind)


ContentPart = Annotated[
    Annotated[TextPart, Tag("text_part")] | Annotated[ImagePart, Tag("image_url_part")],
    Discriminator(
        _part_tag,
        custom_error_type="invalid_content_part",
        custom_error_message="a content part must be an object with `type` \"text\" or \"image_url\"",
    ),
]


class ChatMessageIn(Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(description="`developer` is treated as `system`.")
    content: str | list[ContentPart] = Field(description="A string, or a list of text and image_url parts in order.")
    name: str | None = Field(None, description="Accepted and ignored.")


class ImageOptions(Strict):
    """Extension: how images are sampled. All optional."""

    temperature: Temperature = Field(None, description="Image-token temperature (default 0.7); below 0.01 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Image-token nucleus (default 0.9).")
    top_k: TopK = Field(None, description="Image-token top-k (default 0 = off).")
    cfg: Literal["none", "plain", "text_image"] | None = Field(None, description="Classifier-free guidance mode (default none).")
    guidance_scale: float | None = Field(None, ge=-100, le=100, description="`plain` CFG scale (default 4.0).")
    guidance_scale_text: float | None = Field(None, ge=-100, le=100, description="`text_image` CFG text scale (default 3.0).")
    guidance_scale_image: float | None = Field(None, ge=-100, le=100, description="`text_image` CFG image scale (default 1.2).")
    max_images: int | None = Field(None, ge=0, le=16, description="Most images in one response (default 4).")
    preview_every: int | None = Field(
        None, ge=0, description="Streaming only: a partial preview PNG every K image tokens (0 = none)."
    )


class ResponseFormat(Strict):
    type: str = Field(description="Only `text`.")
    json_schema: Any = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, v: str) -> str:
        return _unsupported(v, "response_format", "only {\"type\": \"text\"}; this model cannot be constrained to JSON.", ("text",))


class ChatCompletionRequest(_PenaltiesAndIgnored):
    model: ModelName = None
    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation, oldest first. At least one message.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (text and image tokens both count).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as `max_tokens`.")
    temperature: Temperature = Field(None, description="Text temperature (default 0.7); 0 or below 0.01 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Text nucleus sampling (default 0.9).")
    top_k: TopK = Field(None, description="Extension: text top-k (default 0 = off).")
    repetition_penalty: RepetitionPenalty = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="Same request + same seed = same answer, streamed or not.")
    stop: StopField = None
    logprobs: bool = Field(False, description="Return the log probability of each generated text token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Also the top-k alternatives (needs `logprobs`).")
    n: int = Field(1, description="Only 1.")
    modalities: list[Literal["text", "image"]] | None = Field(
        None,
        min_length=1,
        description='["text"], ["image"] (exactly one image) or ["text", "image"] (interleaved). '
        "Default: text and image when the checkpoint can decode images, else text.",
    )
    image: ImageOptions | None = Field(None, description="Extension: image sampling, guidance and previews.")
    # accepted and ignored
    metadata: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored (nothing is stored).")
    service_tier: str | None = Field(None, description="Accepted and ignored.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored (there are no tools).")
    # refused with a reason
    tools: list[Any] | None = Field(None, description="Not supported (must be absent or empty).")
    tool_choice: Any = Field(None, description='Not supported (only "none").')
    functions: list[Any] | None = Field(None, description="Not supported.")
    function_call: Any = Field(None, description='Not supported (only "none").')
    response_format: ResponseFormat | None = Field(None, description='Only {"type": "text"}.')
    audio: Any = Field(None, description="Not supported.")
    prediction: Any = Field(None, description="Not supported.")
    web_search_options: Any = Field(None, description="Not supported.")
    reasoning_effort: Any = Field(None, description="Not supported (not a reasoning model).")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int) -> int:
        return _unsupported(v, "n", "only n=1; send separate requests for more answers.", (1,))

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v: list[Any] | None, info: Any) -> list[Any] | None:
        return _unsupported(v or None, info.field_name, "Chameleon models have no tool calling.")

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, v: Any, info: Any) -> Any:
        return _unsupported(v, info.field_name, "Chameleon models have no tool calling.", (None, "none"))

    @field_validator("audio", "prediction", "web_search_options", "reasoning_effort")
    @classmethod
    def _not_supported(cls, v: Any, info: Any) -> Any:
        return _unsupported(v, info.field_name, "this model does not have that feature.")

    @field_validator("modalities")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("modalities must not repeat an entry")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ValueError("`max_tokens` and `max_completion_tokens` disagree; send one of them")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed with `stream: true`")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class OutputTextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class OutputImageURL(BaseModel):
    url: str = Field(description="data:image/png;base64,...")


class OutputImagePart(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: OutputImageURL


class StreamedImagePart(OutputImagePart):
    index: int = Field(description="0-based image number within the response.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | list[OutputTextPart | OutputImagePart] = Field(
        description="A plain string for a text-only answer; an ordered list of text and image parts when it holds images."
    )


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ImageProgressOut(BaseModel):
    index: int
    tokens_done: int
    num_tokens: int
    width: int
    height: int
    preview_url: str | None = Field(None, description="The image so far, when `image.preview_every` asked for previews.")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    images: list[StreamedImagePart] | None = Field(None, description="Extension: one finished image, at its place in the stream.")
    image_progress: ImageProgressOut | None = Field(None, description="Extension: an image has started or advanced.")


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion (see docs/protocol.md for the order)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ---------------------------------------------------------------------------------------------- completions


class CompletionRequest(_PenaltiesAndIgnored):
    model: ModelName = None
    prompt: str | list[int] = Field(description="Raw text (BOS is added) or a list of token ids (used as is).")
    max_tokens: int = Field(16, ge=1, description="Most tokens to generate (default 16, as OpenAI).")
    temperature: Temperature = Field(None, description="Default 0.7; 0 or below 0.01 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (default 0.9).")
    top_k: TopK = None
    repetition_penalty: RepetitionPenalty = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: StopField = None
    logprobs: int | None = Field(None, ge=0, le=20, description="Return the chosen token's logprob and this many alternatives.")
    echo: bool = Field(False, description="Only false.")
    ignore_eos: bool = Field(False, description="Extension: keep generating past end-of-sequence (benchmarks).")
    min_tokens: int = Field(0, ge=0, description="Extension: end-of-sequence forbidden before this many tokens.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="Only 1.")
    best_of: int | None = Field(None, description="Only 1.")
    suffix: str | None = Field(None, description="Not supported.")

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: str | list[int]) -> str | list[int]:
        if len(v) == 0:
            raise ValueError("the prompt is empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        return _unsupported(v, "echo", "only echo=false.", (False,))

    @field_validator("n", "best_of")
    @classmethod
    def _one(cls, v: int | None, info: Any) -> int | None:
        return _unsupported(v, info.field_name, "only 1; send separate requests.", (None, 1))

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        return _unsupported(v, "suffix", "this model does not do insertion.")

    @model_validator(mode="after")
    def _consistent(self) -> "CompletionRequest":
        if self.min_tokens > self.max_tokens:
            raise ValueError("`min_tokens` must not exceed `max_tokens`")
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed with `stream: true`")
        return self


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    """Also the shape of each streamed chunk (then `usage` is null except in the last usage chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---------------------------------------------------------------------------------------------- images

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGenerationRequest(Strict):
    model: ModelName = None
    prompt: str = Field(min_length=1, description="What to draw.")
    n: int = Field(1, ge=1, le=4, description="Images to make (1..4).")
    size: str = Field("auto", description='"WxH", must equal the model\'s image size, or "auto".')
    response_format: Literal["b64_json"] = Field("b64_json", description="Only b64_json (no URLs are hosted).")
    stream: bool = Field(False, description="Server-sent events image_generation.partial_image / image_generation.completed.")
    partial_images: int = Field(0, ge=0, le=3, description="Streaming: partial previews per image (0..3).")
    output_format: Literal["png"] = Field("png", description="Only png.")
    background: Literal["auto", "opaque"] | None = Field(None, description="Images are always opaque.")
    quality: str | None = Field(None, description="Accepted and ignored.")
    style: str | None = Field(None, description="Accepted and ignored.")
    moderation: str | None = Field(None, description="Accepted and ignored.")
    user: str | None = Field(None, description="Accepted and ignored.")

    @field_validator("size")
    @classmethod
    def _size_syntax(cls, v: str) -> str:
        if v != "auto" and not _SIZE.match(v):
            raise ValueError('size must be "WxH" (e.g. "512x512") or "auto"')
        return v

    def parsed_size(self) -> tuple[int, int] | None:
        m = _SIZE.match(self.size)
        return (int(m.group(1)), int(m.group(2))) if m else None


class ImageData(BaseModel):
    b64_json: str = Field(description="The PNG, base64-encoded.")
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class ImagesUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str
    output_format: Literal["png"] = "png"
    background: Literal["opaque"] = "opaque"
    usage: ImagesUsage


class ImagePartialEvent(BaseModel):
    """SSE `event: image_generation.partial_image`."""

    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"
    b64_json: str
    partial_image_index: int
    image_index: int = Field(0, description="Extension: which of the n images.")
    created_at: int
    size: str
    quality: str = "auto"
    background: str = "opaque"
    output_format: str = "png"


class ImageCompletedEvent(BaseModel):
    """SSE `event: image_generation.completed`, one per image."""

    type: Literal["image_generation.completed"] = "image_generation.completed"
    b64_json: str
    image_index: int = Field(0, description="Extension: which of the n images.")
    created_at: int
    size: str
    quality: str = "auto"
    background: str = "opaque"
    output_format: str = "png"
    usage: ImagesUsage


# ---------------------------------------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chameleon-serve"
    max_model_len: int = Field(description="Extension: context length in tokens.")
    output_modalities: list[str] = Field(description='Extension: ["text"] or ["text", "image"].')
    image_size: str | None = Field(description='Extension: "WxH" of generated images, when it makes images.')


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ReadyStatus(BaseModel):
    status: Literal["ready", "loading", "failed", "shutting_down"]
    model: str
