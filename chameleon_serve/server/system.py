"""Operational routes: the model list, liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from chameleon_serve.server.context import ServerContext, get_context
from chameleon_serve.server.errors import ERROR_RESPONSES, model_not_found
from chameleon_serve.server.runtime import State
from chameleon_serve.server.schemas import ModelCard, ModelList, ReadyStatus

router = APIRouter(tags=["server"])
_STARTED = int(time.time())


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, summary="The served model")
async def list_models(ctx: Annotated[ServerContext, Depends(get_context)]) -> ModelList:
    return ModelList(data=[_card(ctx)])


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERROR_RESPONSES, summary="One model")
async def get_model(model_id: str, ctx: Annotated[ServerContext, Depends(get_context)]) -> ModelCard:
    if model_id != ctx.settings.model_name:
        raise model_not_found(model_id, ctx.settings.model_name)
    return _card(ctx)


def _card(ctx: ServerContext) -> ModelCard:
    info = ctx.runtime.require_engine().info  # capabilities are known once loaded
    return ModelCard(
        id=ctx.settings.model_name,
        created=_STARTED,
        max_model_len=info.max_model_len,
        output_modalities=["text", "image"] if info.can_generate_images else ["text"],
        image_size=f"{info.image_width}x{info.image_height}" if info.can_generate_images else None,
    )


@router.get("/health", summary="Liveness: 200 while the process serves HTTP (no auth)")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=ReadyStatus,
    responses={503: {"model": ReadyStatus, "description": "Loading, failed to load, or shutting down."}},
    summary="Readiness: 200 once the model is loaded and the engine runs",
)
async def ready(ctx: Annotated[ServerContext, Depends(get_context)]) -> Response:
    state = ctx.runtime.state
    body = ReadyStatus(status=state.value, model=ctx.settings.model_name).model_dump()
    if state is State.READY:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(ctx: Annotated[ServerContext, Depends(get_context)]) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

