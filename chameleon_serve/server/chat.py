"""POST /v1/chat/completions: mixed-modal chat, streamed or not (docs/protocol.md)."""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from chameleon_serve.engine import (
    Engine,
    GenerationRequest,
    ImageDone,
    ImageProgress,
    ImageStarted,
    InvalidRequest,
    TextDelta,
)
from chameleon_serve.server import sse
from chameleon_serve.server.context import ServerContext, get_context
from chameleon_serve.server.errors import ERROR_RESPONSES, bad_request
from chameleon_serve.server.generation import Generation, submit
from chameleon_serve.server.images import load_image, png_data_url
from chameleon_serve.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageIn,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ImagePart,
    ImageProgressOut,
    OutputImagePart,
    OutputImageURL,
    OutputTextPart,
    StreamedImagePart,
    TextPart,
)
from chameleon_serve.server.translate import (
    chat_logprob,
    check_model,
    api_finish_reason,
    check_token_cap,
    image_params,
    output_mode,
    stop_list,
    text_sampling,
    token_budget,
    usage,
)
from chameleon_serve.tokenizers.prompt import ChatMessage

router = APIRouter(tags=["chat"])

STREAM_DOC = {
    "description": "A `chat.completion`, or with `stream: true` a text/event-stream of `chat.completion.chunk` "
    "events ending with `data: [DONE]`.",
    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}},
}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={200: STREAM_DOC, **ERROR_RESPONSES},
    summary="Chat with text and images in, text and images out",
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, ctx: Annotated[ServerContext, Depends(get_context)]):
    engine = ctx.runtime.require_engine()
    settings, limits = ctx.settings, ctx.settings.limits
    check_model(body.model, settings.model_name)
    budget_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    check_token_cap(body.token_budget, limits, budget_param)
    mode = output_mode(body.modalities, engine.info, settings.model_name)

    messages = await _engine_messages(body.messages, engine, ctx)
    prompt = await _build_prompt(engine, messages)
    gen_request = GenerationRequest(
        prompt_tokens=prompt,
        max_tokens=token_budget(body.token_budget, len(prompt), mode, engine.info, limits, budget_param),
        output=mode,
        text=text_sampling(body.temperature, body.top_p, body.top_k, body.repetition_penalty),
        image=image_params(body.image, stream=body.stream),
        stop=stop_list(body.stop),
        seed=body.seed,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs or 0,
    )
    generation = Generation(engine, submit(engine, gen_request), request, limits.request_timeout_s, ctx.metrics)
    reply = _Reply(f"chatcmpl-{gen_request.request_id}", settings.model_name, body.logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse.stream(reply.chunks(generation, include_usage), ctx.metrics)
    return await reply.collect(generation)


# ---------------------------------------------------------------------------------------------- request side


async def _engine_messages(messages: list[ChatMessageIn], engine: Engine, ctx: ServerContext) -> list[ChatMessage]:
    """API messages -> engine ChatMessages, with every image decoded and checked."""
    _check_images_allowed(messages, engine, ctx.settings.limits.max_images_per_request)
    out = []
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            content = [message.content]
        else:
            content = [await _part_content(part, f"messages[{i}].content[{j}]", ctx) for j, part in enumerate(message.content)]
        out.append(ChatMessage(role="system" if message.role == "developer" else message.role, content=content))
    return out


def _check_images_allowed(messages: list[ChatMessageIn], engine: Engine, max_images: int) -> None:
    """Cheap checks before any image is decoded."""
    where = [
        f"messages[{i}].content[{j}]"
        for i, message in enumerate(messages)
        if isinstance(message.content, list)
        for j, part in enumerate(message.content)
        if isinstance(part, ImagePart)
    ]
    if len(where) > max_images:
        raise bad_request(f"The request has {len(where)} images; this server takes at most {max_images}.", "messages", "too_many_images")
    if where and not engine.info.can_read_images:
        raise bad_request("The served model has no VQ image encoder, so it cannot read images.", where[0], "image_input_unavailable")


async def _part_content(part: TextPart | ImagePart, param: str, ctx: ServerContext) -> str | Image.Image:
    if isinstance(part, TextPart):
        return part.text
    settings = ctx.settings
    return await load_image(part.image_url.url, limits=settings.limits, allow_remote=settings.allow_remote_images, param=param)


async def _build_prompt(engine: Engine, messages: list[ChatMessage]) -> list[int]:
    try:
        return await run_in_threadpool(engine.build_chat_prompt, messages)  # VQ-encodes images
    except InvalidRequest as exc:
        raise bad_request(str(exc), exc.param) from None


# ---------------------------------------------------------------------------------------------- response side


class _Reply:
    """Builds the answer of one request, as one chat.completion or as chunks."""

    def __init__(self, completion_id: str, model: str, want_logprobs: bool):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        self.want_logprobs = want_logprobs

    async def collect(self, generation: Generation) -> ChatCompletionResponse:
        parts: list[OutputTextPart | OutputImagePart] = []
        logprobs = []
        async for event in generation.events():
            if isinstance(event, TextDelta) and event.text:
                if parts and isinstance(parts[-1], OutputTextPart):
                    parts[-1].text += event.text
                else:
                    parts.append(OutputTextPart(text=event.text))
            if isinstance(event, TextDelta) and event.logprobs:
                logprobs += [chat_logprob(lp) for lp in event.logprobs]
            elif isinstance(event, ImageDone):
                parts.append(OutputImagePart(image_url=OutputImageURL(url=png_data_url(event.png))))
        has_images = any(isinstance(p, OutputImagePart) for p in parts)
        content = parts if has_images else "".join(p.text for p in parts)
        finished = generation.finished
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=content),
                    finish_reason=api_finish_reason(finished.finish_reason),
                    logprobs=ChoiceLogprobs(content=logprobs) if self.want_logprobs else None,
                )
            ],
            usage=usage(finished.usage),
        )

    async def chunks(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        yield self._chunk(ChunkDelta(role="assistant", content=""))
        sizes: dict[int, tuple[int, int]] = {}
        async for event in generation.events():
            if isinstance(event, TextDelta):
                logprobs = ChoiceLogprobs(content=[chat_logprob(lp) for lp in event.logprobs]) if event.logprobs else None
                if event.text or logprobs:
                    yield self._chunk(ChunkDelta(content=event.text), logprobs=logprobs)
            elif isinstance(event, ImageStarted):
                sizes[event.index] = (event.width, event.height)
                progress = ImageProgressOut(index=event.index, tokens_done=0, num_tokens=event.num_tokens, width=event.width, height=event.height)
                yield self._chunk(ChunkDelta(image_progress=progress))
            elif isinstance(event, ImageProgress):
                width, height = sizes.get(event.index, (0, 0))
                preview = png_data_url(event.preview_png) if event.preview_png else None
                progress = ImageProgressOut(
                    index=event.index, tokens_done=event.tokens_done, num_tokens=event.num_tokens, width=width, height=height, preview_url=preview
                )
                yield self._chunk(ChunkDelta(image_progress=progress))
            elif isinstance(event, ImageDone):
                image = StreamedImagePart(index=event.index, image_url=OutputImageURL(url=png_data_url(event.png)))
                yield self._chunk(ChunkDelta(images=[image]))
        finished = generation.finished
        yield self._chunk(ChunkDelta(), finish_reason=api_finish_reason(finished.finish_reason))
        if include_usage:
            yield self._chunk(None, usage_=usage(finished.usage))

    def _chunk(self, delta: ChunkDelta | None, *, finish_reason: str | None = None, logprobs: ChoiceLogprobs | None = None, usage_=None) -> str:
        choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish_reason, logprobs=logprobs)]
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage_)
        data = chunk.model_dump(mode="json")
        for choice, raw in zip(chunk.choices, data["choices"]):
            raw["delta"] = choice.delta.model_dump(mode="json", exclude_none=True)  # deltas carry only what changed
        return sse.event(json.dumps(data, separators=(",", ":")))

