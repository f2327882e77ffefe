"""The engine's life inside the server: load in the background, serve, drain on shutdown.

Loading runs in a thread started from the app's lifespan, so the HTTP socket is up first: /health
answers and /ready says 503 while weights load. Shutdown stops new requests (503), lets running ones
finish for a grace period, then cancels the rest (engine.shutdown does exactly that).
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from chameleon_serve.engine import Engine, EngineConfig, ModelInfo
from chameleon_serve.server.errors import not_ready
from chameleon_serve.server.settings import ServerSettings

log = logging.getLogger("chameleon_serve.server")


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"


def load_engine(settings: ServerSettings) -> Engine:
    config = EngineConfig(
        max_sequences=settings.max_sequences,
        max_model_len=settings.max_model_len,
        max_queue=settings.max_queue,
        device=settings.device,
        dtype=settings.dtype,
        cpu_threads=settings.cpu_threads,
    )
    return Engine.from_checkpoint(settings.model_path, vqgan_path=settings.vqgan_path, config=config, name=settings.model_name)


class EngineRuntime:
    def __init__(
        self,
        settings: ServerSettings,
        loader: Callable[[ServerSettings], Engine] = load_engine,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ):
        self.settings = settings
        self.loader = loader
        self.on_load_failure = on_load_failure
        self.state = State.LOADING
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()  # set once a shutdown has finished draining the engine

    # ---- lifecycle

    def start_loading(self) -> None:
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            if self.settings.load_delay_s > 0:
                log.info("waiting %.1f s before loading (--load-delay)", self.settings.load_delay_s)
                time.sleep(self.settings.load_delay_s)
            log.info("loading %s ...", self.settings.model_path)
            started = time.monotonic()
            engine = self.loader(self.settings).start()
        except BaseException as exc:  # noqa: BLE001 - any failure must reach the operator, not kill a thread silently
            log.exception("loading the model from %s failed", self.settings.model_path)
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.state = State.FAILED
            if self.on_load_failure:
                self.on_load_failure(exc)
            return
        with self._lock:
            self.engine = engine
            if self.state is State.SHUTTING_DOWN:  # shutdown came while loading
                engine.shutdown(timeout=0)
                return
            self.state = State.READY
        log.info("loaded in %.1f s: %s", time.monotonic() - started, describe(engine.info, self.settings))
        log.info("ready: %s/v1 (OpenAPI docs at %s/docs)", self.settings.listen_url, self.settings.listen_url)

    def shutdown(self, grace_s: float) -> None:
        """New requests get 503 from now on; running ones get `grace_s` to finish.

        Idempotent, and every caller returns only once the engine has stopped: SIGTERM starts the drain
        on its own thread, and the app's shutdown must not let the process exit in the middle of it.
        """
        with self._lock:
            first = self.state is not State.SHUTTING_DOWN
            self.state = State.SHUTTING_DOWN
            engine = self.engine
        if not first:
            self._stopped.wait(grace_s + 60)
            return
        try:
            if engine is not None:
                log.info("shutting down: running requests may finish for %.0f s", grace_s)
                engine.shutdown(timeout=grace_s)
                log.info("engine stopped")
        finally:
            self._stopped.set()

    # ---- used by routes

    def require_engine(self) -> Engine:
        """The running engine, or a 503 that says why there is none."""
        if self.state is State.READY and self.engine is not None:
            return self.engine
        if self.state is State.LOADING:
            raise not_ready("The model is still loading; retry shortly.")
        if self.state is State.FAILED:
            raise not_ready(f"The model failed to load ({self.load_error}).", retry_after_s=60)
        raise not_ready("The server is shutting down.")

    def stats(self) -> tuple[int, int] | None:
        engine = self.engine
        if engine is None:
            return None
        s = engine.stats()
        return s.running, s.waiting


def describe(info: ModelInfo, settings: ServerSettings) -> str:
    """One line for the startup log: what was loaded, from where, and what it can do."""
    outputs = "text"
    if info.can_generate_images:
        outputs += f" and images ({info.image_width}x{info.image_height}, {info.image_tokens} tokens each)"
    inputs = "text and images" if info.can_read_images else "text"
    vqgan = f", VQGAN from {settings.vqgan_path}" if settings.vqgan_path else ""
    return (
        f"model `{settings.model_name}` from {settings.model_path}{vqgan}; reads {inputs}; generates {outputs}; "
        f"context {info.max_model_len} tokens; vocab {info.vocab_size}"
    )
