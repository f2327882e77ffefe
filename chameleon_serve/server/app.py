"""The FastAPI application: `create_app(settings)` wires routes, errors, middleware and the engine."""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Security
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from chameleon_serve.engine import Engine
from chameleon_serve.server import chat, completions, image_generation, system
from chameleon_serve.server.context import ServerContext
from chameleon_serve.server.errors import install_error_handlers
from chameleon_serve.server.images import configure_pil
from chameleon_serve.server.metrics import Metrics
from chameleon_serve.server.middleware import AuthMiddleware, BodyLimitMiddleware, JSONBodyMiddleware, MetricsMiddleware
from chameleon_serve.server.runtime import EngineRuntime, load_engine
from chameleon_serve.server.schemas import ChatCompletionChunk, ImageCompletedEvent, ImagePartialEvent
from chameleon_serve.server.settings import ServerSettings

log = logging.getLogger("chameleon_serve.server")

DESCRIPTION = """OpenAI-compatible serving of early-fusion mixed-modal models (Chameleon, Anole, Lumina-mGPT):
one answer can interleave text and images. The contract, with its extensions, is docs/protocol.md."""

# Schemas only reached through text/event-stream responses, listed so /docs shows them.
_STREAM_SCHEMAS = (ChatCompletionChunk, ImagePartialEvent, ImageCompletedEvent)
WEB_PAGE = Path(__file__).parent / "static" / "index.html"


def create_app(
    settings: ServerSettings,
    loader: Callable[[ServerSettings], Engine] = load_engine,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app. The model loads in the background once the app starts (see runtime.py)."""
    runtime = EngineRuntime(settings, loader, on_load_failure)
    metrics = Metrics(runtime.stats)
    configure_pil(settings.limits.max_image_pixels)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        runtime.start_loading()
        yield
        runtime.shutdown(settings.shutdown_grace_s)

    app = FastAPI(title="chameleon-serve", description=DESCRIPTION, version="0.1.0", lifespan=lifespan)
    app.state.context = ServerContext(settings, runtime, metrics)
    install_error_handlers(app)

    # Auth is enforced by AuthMiddleware (before the body is read); this dependency only documents
    # the Bearer scheme in OpenAPI.
    documented_auth = [Security(HTTPBearer(auto_error=False))] if settings.api_keys else []
    for module in (chat, completions, image_generation):
        app.include_router(module.router, dependencies=documented_auth)
    app.include_router(system.router)

    # added last = outermost: metrics see every answer, auth runs before the body is read
    app.add_middleware(JSONBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.limits.max_body_bytes)
    app.add_middleware(AuthMiddleware, api_keys=settings.api_keys)
    app.add_middleware(WebPageMiddleware)
    paths = frozenset(route.path for module in (chat, completions, image_generation, system) for route in module.router.routes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=paths)
    app.openapi = lambda: _openapi(app)
    return app


class WebPageMiddleware:
    """GET / is the chat page, served outside auth: it holds no data and asks for a key when the API answers 401."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            page = HTMLResponse(WEB_PAGE.read_bytes(), headers={"Cache-Control": "no-cache"})
            return await page(scope, receive, send)
        await self.app(scope, receive, send)


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _STREAM_SCHEMAS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        _drop_422(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _drop_422(schema: dict) -> None:
    """FastAPI documents validation errors as 422; this server answers them with 400 (ErrorResponse)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
