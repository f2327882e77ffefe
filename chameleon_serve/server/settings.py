"""Everything an operator can set about the HTTP server, in one place.

`ServerSettings` is filled from the `chameleon-serve serve` command line (server/cli.py) and read by
the app; the defaults are the safe ones documented in the README.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

API_KEYS_ENV = "CHAMELEON_SERVE_API_KEYS"

MiB = 1024 * 1024


@dataclass
class Limits:
    """Per-request limits. Each one has a CLI flag; bad input over a limit gets a 4xx, never a 500."""

    max_body_bytes: int = 32 * MiB  # whole HTTP request body
    max_images_per_request: int = 8  # image parts over all messages
    max_image_bytes: int = 10 * MiB  # one decoded image file
    max_image_pixels: int = 4096 * 4096  # width * height, checked from the header before decoding
    max_tokens_cap: int = 8192  # largest max_tokens a request may ask for
    request_timeout_s: float = 600.0  # wall time of one generation, queueing included
    remote_image_timeout_s: float = 10.0  # fetching one http(s) image (only with --allow-remote-images)


@dataclass
class ServerSettings:
    model_path: Path
    vqgan_path: Path | None = None
    served_model_name: str | None = None  # default: the checkpoint directory's name
    device: str | None = None
    dtype: str | None = None
    cpu_threads: int | None = None  # torch intra-op threads; default: torch's choice
    max_sequences: int = 8  # sequences decoded together by the engine
    max_queue: int = 64  # requests waiting for a slot before 429
    max_model_len: int | None = None  # context length; default: the checkpoint's
    api_keys: list[str] = field(default_factory=list)  # empty = no auth
    allow_remote_images: bool = False
    shutdown_grace_s: float = 30.0  # running requests may finish for this long after SIGTERM
    load_delay_s: float = 0.0  # sleep before loading: lets tests and operators observe /ready = 503
    limits: Limits = field(default_factory=Limits)
    listen_url: str = ""  # for log lines, e.g. http://127.0.0.1:8000

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_path.name


def api_keys_from_env() -> list[str]:
    """Keys from CHAMELEON_SERVE_API_KEYS (comma-separated), so they need not appear in `ps` output."""
    return [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
