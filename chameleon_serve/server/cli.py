"""`chameleon-serve serve`: run the HTTP server.

The socket opens first and the model loads in the background (/health answers, /ready is 503 until the
engine runs). SIGTERM / Ctrl-C: new requests get 503, running ones may finish for --shutdown-grace
seconds, the rest are cancelled, then the process exits. Exit status 1 when the model fails to load,
2 for a usage error (e.g. no model to serve).
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

import uvicorn

import chameleon_serve
from chameleon_serve.server.app import create_app
from chameleon_serve.server.runtime import EngineRuntime
from chameleon_serve.server.settings import API_KEYS_ENV, MiB, Limits, ServerSettings, api_keys_from_env

log = logging.getLogger("chameleon_serve.server")

DEMO_MODEL = Path(chameleon_serve.__file__).parent / "demo_model"
_DEFAULTS = Limits()



def bounded(convert, what: str, check, rule: str):
    """An argparse type: `convert` the text, then `check` it; either failure names the problem."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


positive_int = bounded(int, "a whole number", lambda v: v >= 1, "must be at least 1")
positive_float = bounded(float, "a number", lambda v: v > 0, "must be more than 0")
port_number = bounded(int, "a port number", lambda v: 0 <= v <= 65535, "a port is 0..65535")


def add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument("--model", type=Path, default=None, help=f"checkpoint directory (HF or Meta format); default: the demo model at {DEMO_MODEL}")
    model.add_argument("--vqgan", type=Path, default=None, help="separate VQGAN checkpoint (e.g. Meta's vqgan.ckpt) supplying the image decoder")
    model.add_argument("--served-model-name", default=None, help="model id clients send and /v1/models lists (default: the checkpoint directory's name)")
    model.add_argument("--device", default=None, help="torch device, e.g. cuda, cuda:1, cpu (default: cuda when available)")
    model.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="transformer dtype (default: bfloat16 on CUDA, float32 on CPU)")
    model.add_argument("--cpu-threads", type=positive_int, default=None, metavar="N", help="torch CPU threads (default: torch's choice; 1 helps on a CPU shared with other work)")
    model.add_argument("--max-model-len", type=positive_int, default=None, help="context length in tokens (default: the checkpoint's)")

    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces; default 127.0.0.1)")
    net.add_argument("--port", type=port_number, default=8000)
    net.add_argument("--api-key", action="append", default=[], help=f"accepted Bearer key; repeat for several. Also read from ${API_KEYS_ENV} (comma-separated)")
    net.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs in requests (default: only data URLs)")

    lim = p.add_argument_group("limits")
    lim.add_argument("--max-sequences", type=positive_int, default=8, help="sequences decoded together (engine slots; CFG uses extra rows)")
    lim.add_argument("--max-queue", type=positive_int, default=64, help="requests waiting for a slot; beyond that: 429 with Retry-After")
    lim.add_argument("--max-body-mb", type=positive_float, default=_DEFAULTS.max_body_bytes / MiB, help="request body size limit (413)")
    lim.add_argument("--max-images-per-request", type=positive_int, default=_DEFAULTS.max_images_per_request, help="input images per request (400)")
    lim.add_argument("--max-image-mb", type=positive_float, default=_DEFAULTS.max_image_bytes / MiB, help="one input image file's size (413)")
    lim.add_argument("--max-image-pixels", type=positive_int, default=_DEFAULTS.max_image_pixels, help="one input image's width*height, checked before decoding (413)")
    lim.add_argument("--max-tokens-cap", type=positive_int, default=_DEFAULTS.max_tokens_cap, help="largest max_tokens a request may ask for (400)")
    lim.add_argument("--request-timeout", type=positive_float, default=_DEFAULTS.request_timeout_s, help="seconds one request may take, queueing included (504)")
    lim.add_argument("--remote-image-timeout", type=positive_float, default=_DEFAULTS.remote_image_timeout_s, help="seconds to fetch one remote image")

    ops = p.add_argument_group("operations")
    ops.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds running requests may finish after SIGTERM before they are cancelled")
    ops.add_argument("--load-delay", type=float, default=0.0, help="wait this many seconds before loading the model (to test readiness probes)")
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * MiB),
        max_images_per_request=args.max_images_per_request,
        max_image_bytes=int(args.max_image_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_tokens_cap=args.max_tokens_cap,
        request_timeout_s=args.request_timeout,
        remote_image_timeout_s=args.remote_image_timeout,
    )
    return ServerSettings(
        model_path=args.model or DEMO_MODEL,
        vqgan_path=args.vqgan,
        served_model_name=args.served_model_name,
        device=args.device,
        dtype=args.dtype,
        cpu_threads=args.cpu_threads,
        max_sequences=args.max_sequences,
        max_queue=args.max_queue,
        max_model_len=args.max_model_len,
        api_keys=list(args.api_key) + api_keys_from_env(),
        allow_remote_images=args.allow_remote_images,
        shutdown_grace_s=args.shutdown_grace,
        load_delay_s=args.load_delay,
        limits=limits,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    settings.listen_url = f"http://{args.host}:{args.port}"
    problem = _check_paths(settings, explicit_model=args.model is not None)
    if problem:
        print(f"chameleon-serve serve: {problem}", file=sys.stderr)
        return 2

    server: _GracefulServer | None = None
    failed = threading.Event()

    def on_load_failure(_: BaseException) -> None:
        failed.set()
        if server is not None:
            server.should_exit = True  # an unusable server should not pretend to be up

    app = create_app(settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,  # backstop after the engine's own grace
    )
    server = _GracefulServer(config, app.state.context.runtime, settings.shutdown_grace_s)
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "off"
    log.info("serving `%s` at %s/v1 (auth: %s); the model loads in the background", settings.model_name, settings.listen_url, auth)
    server.run()
    return 1 if failed.is_set() else 0


class _GracefulServer(uvicorn.Server):
    """Drains the engine on SIGTERM/SIGINT: new requests get 503 at once, running ones get the grace
    period, then uvicorn closes the (by then finished) connections."""

    def __init__(self, config: uvicorn.Config, runtime: EngineRuntime, grace_s: float):
        super().__init__(config)
        self.runtime = runtime
        self.grace_s = grace_s

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            threading.Thread(target=self.runtime.shutdown, args=(self.grace_s,), name="drain", daemon=True).start()
        super().handle_exit(sig, frame)


def _check_paths(settings: ServerSettings, explicit_model: bool) -> str | None:
    path = settings.model_path
    if not path.exists():
        if not explicit_model:
            return (
                f"the demo model is missing (expected at {path}); it is not built yet in this checkout. "
                "Serve a checkpoint instead: chameleon-serve serve --model /path/to/checkpoint"
            )
        return f"--model {path}: no such file or directory"
    if settings.vqgan_path is not None and not settings.vqgan_path.exists():
        return f"--vqgan {settings.vqgan_path}: no such file or directory"
    return None
