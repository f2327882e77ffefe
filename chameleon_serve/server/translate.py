"""API fields -> engine parameters, and engine results -> API objects. Shared by every route.

Everything here is plain data conversion plus the checks that need the model's facts (context length,
image size, what it can generate); range checks on single fields live in the pydantic schemas.
"""
from __future__ import annotations

from chameleon_serve.engine import (
    CFGMode,
    ImageParams,
    ModelInfo,
    OutputMode,
    SamplingParams,
    TokenLogprob,
)
from chameleon_serve.engine import Usage as EngineUsage
from chameleon_serve.server.errors import bad_request, model_not_found
from chameleon_serve.server.schemas import (
    CompletionTokensDetails,
    ImageOptions,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from chameleon_serve.server.settings import Limits

# Text sampling defaults when the request leaves a field out (Chameleon reference settings).
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
# Dividing logits by a tinier temperature overflows to inf/NaN; below this, sampling is greedy anyway.
MIN_TEMPERATURE = 0.01


def _temperature(value: float) -> float:
    return 0.0 if value < MIN_TEMPERATURE else value


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise model_not_found(requested, served)


def text_sampling(temperature: float | None, top_p: float | None, top_k: int | None, repetition_penalty: float | None) -> SamplingParams:
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if temperature is None else _temperature(temperature),
        top_p=DEFAULT_TOP_P if top_p is None else top_p,
        top_k=top_k or 0,
        repetition_penalty=repetition_penalty or 1.0,
    )


def image_params(options: ImageOptions | None, *, stream: bool) -> ImageParams:
    params = ImageParams()
    if options is None:
        return params
    s = params.sampling
    s.temperature = s.temperature if options.temperature is None else _temperature(options.temperature)
    s.top_p = s.top_p if options.top_p is None else options.top_p
    s.top_k = s.top_k if options.top_k is None else options.top_k
    if options.cfg is not None:
        params.cfg = CFGMode(options.cfg)
    for name in ("guidance_scale", "guidance_scale_text", "guidance_scale_image", "max_images"):
        if getattr(options, name) is not None:
            setattr(params, name, getattr(options, name))
    # previews only make sense when there is a stream to send them on
    params.preview_every = (options.preview_every or 0) if stream else 0
    return params


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 8 or any(not s for s in stops):
        raise bad_request("`stop` takes at most 8 non-empty strings.", "stop")
    return stops


def output_mode(modalities: list[str] | None, info: ModelInfo, model_name: str, param: str | None = "modalities") -> OutputMode:
    """`modalities` -> OutputMode; the default follows what the checkpoint can do."""
    if modalities is None:
        return OutputMode.INTERLEAVED if info.can_generate_images else OutputMode.TEXT
    wanted = set(modalities)
    if "image" in wanted and not info.can_generate_images:
        raise bad_request(
            f"The served model `{model_name}` cannot generate images: its checkpoint has no VQ image decoder "
            "(start the server with --vqgan pointing at a VQGAN with a decoder). Use modalities [\"text\"].",
            param,
            "image_output_unavailable",
        )
    if wanted == {"text"}:
        return OutputMode.TEXT
    if wanted == {"image"}:
        return OutputMode.IMAGE
    return OutputMode.INTERLEAVED


def check_token_cap(requested: int | None, limits: Limits, param: str = "max_tokens") -> None:
    """Cheap check done before any prompt work."""
    if requested is not None and requested > limits.max_tokens_cap:
        raise bad_request(f"`{param}` is {requested}; this server allows at most {limits.max_tokens_cap}.", param)


def token_budget(requested: int | None, prompt_len: int, mode: OutputMode, info: ModelInfo, limits: Limits, param: str = "max_tokens") -> int:
    """How many tokens the request may generate: its own max_tokens, or all the room left (capped).

    The prompt must leave room for the smallest useful answer: one token, or a whole image for an
    image-only request.
    """
    context = info.max_model_len
    room = context - prompt_len
    needed = info.image_tokens + 2 if mode is OutputMode.IMAGE else 1  # an image is boi + codes + eoi
    if room < needed:
        raise bad_request(
            f"The prompt is {prompt_len} tokens; with the {needed} token(s) the answer needs, that exceeds "
            f"this model's context of {context} tokens.",
            "messages",
            "context_length_exceeded",
        )
    if requested is None:
        return min(room, max(limits.max_tokens_cap, needed))
    if prompt_len + requested > context:
        raise bad_request(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} in the completion).",
            param,
            "context_length_exceeded",
        )
    if requested < needed:
        raise bad_request(f"An image takes {needed} tokens; `{param}` is {requested}.", param)
    return requested


def api_finish_reason(engine_reason: str) -> str:
    # "cancelled" only reaches a client that has gone away; everything else is stop or length
    return engine_reason if engine_reason in ("stop", "length") else "stop"


def usage(u: EngineUsage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        completion_tokens_details=CompletionTokensDetails(text_tokens=u.text_tokens, image_tokens=u.image_tokens),
    )


def chat_logprob(lp: TokenLogprob) -> TokenLogprobOut:
    return TokenLogprobOut(
        token=lp.token,
        logprob=lp.logprob,
        bytes=lp.bytes,
        top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top],
    )
