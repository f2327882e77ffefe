"""Prometheus metrics, served at GET /metrics.

Each app has its own registry (several apps in one test process must not collide). The running and
waiting gauges are read from the engine at scrape time, so they are never stale.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chameleon_serve.engine import Usage
from chameleon_serve.server.errors import ERROR_TYPES

PREFIX = "chameleon"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class _EngineGauges(Collector):
    def __init__(self, stats: Callable[[], tuple[int, int] | None]):
        self.stats = stats

    def collect(self):
        running, waiting = self.stats() or (0, 0)
        yield GaugeMetricFamily(f"{PREFIX}_requests_running", "Requests decoding in the engine now.", value=running)
        yield GaugeMetricFamily(f"{PREFIX}_requests_waiting", "Requests queued for an engine slot.", value=waiting)


class Metrics:
    def __init__(self, engine_stats: Callable[[], tuple[int, int] | None]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.errors = Counter(f"{PREFIX}_request_errors", "Error answers by error type.", ["type"], registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Submit to first generated token.", buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds", "Time per generated token between output events.", buckets=_TOKEN_LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds", "Submit to end of generation.", buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Generated tokens by modality.", ["modality"], registry=r)
        self.images = Counter(f"{PREFIX}_images_generated", "Images generated.", registry=r)
        r.register(_EngineGauges(engine_stats))
        # export every label value from the start, so rates work from the first scrape
        for modality in ("text", "image"):
            self.generation_tokens.labels(modality)
        for error_type in set(ERROR_TYPES.values()):
            self.errors.labels(error_type)

    def record_usage(self, usage: Usage, images: int) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.generation_tokens.labels("text").inc(usage.text_tokens)
        self.generation_tokens.labels("image").inc(usage.image_tokens)
        self.images.inc(images)

    def record_response(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(ERROR_TYPES.get(status, "server_error")).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
