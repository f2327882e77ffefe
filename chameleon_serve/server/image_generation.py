"""POST /v1/images/generations: the OpenAI Images API over image-only generation.

n images are n engine requests submitted together (they decode side by side). Streaming sends each
image's partial previews and then its `image_generation.completed` event, image after image.
"""
from __future__ import annotations

import base64
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from chameleon_serve.engine import Engine, GenerationRequest, ImageDone, ImageParams, ImageProgress, InvalidRequest, ModelInfo, OutputMode
from chameleon_serve.server import sse
from chameleon_serve.server.context import ServerContext, get_context
from chameleon_serve.server.errors import ERROR_RESPONSES, APIError, bad_request
from chameleon_serve.server.generation import Generation, submit
from chameleon_serve.server.schemas import (
    ImageCompletedEvent,
    ImageData,
    ImageGenerationRequest,
    ImagePartialEvent,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
)
from chameleon_serve.server.translate import check_model, output_mode, text_sampling, token_budget
from chameleon_serve.tokenizers.prompt import ChatMessage

router = APIRouter(tags=["images"])

STREAM_DOC = {
    "description": "The images, or with `stream: true` a text/event-stream of `image_generation.partial_image` and "
    "`image_generation.completed` events (`event: <type>` + `data: <json>`).",
    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ImageCompletedEvent"}}},
}


@router.post("/v1/images/generations", response_model=ImagesResponse, responses={200: STREAM_DOC, **ERROR_RESPONSES}, summary="Generate images from a prompt")
async def create_images(body: ImageGenerationRequest, request: Request, ctx: Annotated[ServerContext, Depends(get_context)]):
    engine = ctx.runtime.require_engine()
    settings = ctx.settings
    check_model(body.model, settings.model_name)
    output_mode(["image"], engine.info, settings.model_name, param=None)  # 400 when the checkpoint cannot make images
    size = _check_size(body, engine.info)
    prompt = await _prompt(engine, body.prompt)
    generations = _submit_all(body, engine, prompt, request, ctx)
    job = _ImageJob(generations, size, len(prompt), partial_images=body.partial_images if body.stream else 0)
    if body.stream:
        return sse.stream(job.events(), ctx.metrics, done_marker=False, error_event="error")
    return await job.collect()


def _check_size(body: ImageGenerationRequest, info: ModelInfo) -> str:
    native = f"{info.image_width}x{info.image_height}"
    if body.size != "auto" and body.parsed_size() != (info.image_width, info.image_height):
        raise bad_request(f"size must be \"{native}\" (the model's image size) or \"auto\"; got \"{body.size}\".", "size")
    return native


async def _prompt(engine: Engine, text: str) -> list[int]:
    try:
        return await run_in_threadpool(engine.build_chat_prompt, [ChatMessage(role="user", content=[text])])
    except InvalidRequest as exc:
        raise bad_request(str(exc), "prompt") from None


def _submit_all(body: ImageGenerationRequest, engine: Engine, prompt: list[int], request: Request, ctx: ServerContext) -> list[Generation]:
    """Submits the n requests; if one is refused (e.g. queue full), the ones already in are cancelled."""
    info, limits = engine.info, ctx.settings.limits
    previews = math.ceil(info.image_tokens / (body.partial_images + 1)) if body.stream and body.partial_images else 0
    generations: list[Generation] = []
    try:
        for _ in range(body.n):
            gen_request = GenerationRequest(
                prompt_tokens=prompt,
                max_tokens=token_budget(None, len(prompt), OutputMode.IMAGE, info, limits, "prompt"),
                output=OutputMode.IMAGE,
                text=text_sampling(None, None, None, None),
                image=ImageParams(preview_every=previews),
            )
            generations.append(Generation(engine, submit(engine, gen_request), request, limits.request_timeout_s, ctx.metrics))
    except APIError:
        for g in generations:
            g.handle.cancel()
        raise
    return generations


class _ImageJob:
    def __init__(self, generations: list[Generation], size: str, prompt_len: int, partial_images: int):
        self.generations = generations
        self.size = size
        self.prompt_len = prompt_len
        self.partial_images = partial_images
        self.created = int(time.time())

    async def collect(self) -> ImagesResponse:
        try:
            pngs = [await self._one_image(g) for g in self.generations]
        finally:
            self._cancel_unfinished()
        data = [ImageData(b64_json=_b64(png)) for png in pngs]
        return ImagesResponse(created=self.created, data=data, size=self.size, usage=self._usage(self.generations))

    async def events(self) -> AsyncIterator[str]:
        try:
            for index, generation in enumerate(self.generations):
                sent_partials, png = 0, None
                async for event in generation.events():
                    if isinstance(event, ImageProgress) and event.preview_png and sent_partials < self.partial_images:
                        partial = ImagePartialEvent(
                            b64_json=_b64(event.preview_png), partial_image_index=sent_partials, image_index=index, created_at=self.created, size=self.size
                        )
                        sent_partials += 1
                        yield sse.event(partial.model_dump_json(), partial.type)
                    elif isinstance(event, ImageDone):
                        png = event.png
                if png is None and generation.client_gone:
                    return  # nobody is listening any more
                if png is None:
                    raise APIError(500, "The engine finished without an image.")
                completed = ImageCompletedEvent(
                    b64_json=_b64(png), image_index=index, created_at=self.created, size=self.size, usage=self._usage([generation])
                )
                yield sse.event(completed.model_dump_json(), completed.type)
        finally:
            self._cancel_unfinished()

    async def _one_image(self, generation: Generation) -> bytes:
        png = None
        async for event in generation.events():
            if isinstance(event, ImageDone):
                png = event.png
        if png is None and generation.client_gone:
            return b""  # the answer goes nowhere
        if png is None:  # the engine guarantees one image for an image-only request: a bug
            raise APIError(500, "The engine finished without an image.")
        return png

    def _cancel_unfinished(self) -> None:
        for g in self.generations:
            if g.finished is None:
                g.handle.cancel()

    def _usage(self, generations: list[Generation]) -> ImagesUsage:
        output = sum(g.finished.usage.completion_tokens for g in generations if g.finished)
        inputs = self.prompt_len * len(generations)
        return ImagesUsage(
            input_tokens=inputs,
            output_tokens=output,
            total_tokens=inputs + output,
            input_tokens_details=InputTokensDetails(text_tokens=inputs, image_tokens=0),
        )


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
