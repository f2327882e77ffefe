"""Python client for a chameleon-serve server: answers that interleave text and images.

    from chameleon_serve.clients import Client, ImageOptions

    with Client("http://127.0.0.1:8000") as client:
        answer = client.chat("draw a cat and describe it", seed=7)
        for part in answer.parts:            # TextPart and ImagePart, in the model's order
            ...

Needs only httpx and pillow: this package never imports torch, numpy, fastapi or the server side
of chameleon_serve (a client-only `pip install chameleon-serve` works). The HTTP contract it
speaks is docs/protocol.md.
"""
from .async_client import AsyncChatStream, AsyncClient
from .client import ChatStream, Client
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
    ServiceUnavailableError,
)
from .events import Finished, ImageDone, ImageProgress, ImageStarted, StreamEvent, TextDelta, acollect_stream, collect_stream
from .inputs import image_to_data_url
from .protocol import ImageOptions, ModelInfo, RetryPolicy
from .responses import ChatResponse, ImagePart, Part, TextPart, Usage

__all__ = [
    "Client",
    "AsyncClient",
    "ChatStream",
    "AsyncChatStream",
    "ImageOptions",
    "RetryPolicy",
    "ModelInfo",
    "ChatResponse",
    "Part",
    "TextPart",
    "ImagePart",
    "Usage",
    "StreamEvent",
    "TextDelta",
    "ImageStarted",
    "ImageProgress",
    "ImageDone",
    "Finished",
    "collect_stream",
    "acollect_stream",
    "image_to_data_url",
    "APIError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "RequestTooLargeError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "APIConnectionError",
    "APITimeoutError",
]
