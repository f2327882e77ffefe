"""What every route needs from the app: settings, the engine runtime, metrics (one per app)."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from chameleon_serve.server.metrics import Metrics
from chameleon_serve.server.runtime import EngineRuntime
from chameleon_serve.server.settings import ServerSettings


@dataclass
class ServerContext:
    settings: ServerSettings
    runtime: EngineRuntime
    metrics: Metrics


def get_context(request: Request) -> ServerContext:
    """FastAPI dependency."""
    return request.app.state.context
