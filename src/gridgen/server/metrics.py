"""``GET /metrics``: the service's numbers in the Prometheus text format.

One ``prometheus_client`` registry per app (so two apps in one process never mix
their numbers) holds the runner's collector (:class:`gridgen.metrics.RunnerCollector`),
this process's CPU and memory (``process_*``), and the HTTP service's own two metrics:

* ``gridgen_http_requests_total{route, outcome, status_class}``: every HTTP request once
  its response ended. ``route`` is one of the app's paths (anything else: ``other``);
  ``outcome`` is ``ok``, ``invalid``, ``too_large``, ``cancelled`` (the client left, or the
  runner dropped it), ``timeout``, ``worker_error``, ``worker_died``, ``queue_full``,
  ``closed`` (not ready: starting, restarting, draining), ``not_found`` or ``error``;
  ``status_class`` is ``2xx``, ``4xx`` or ``5xx``. A ``/stream`` answers 200 before it
  knows the outcome: its ``outcome`` is the one of its ``result`` or ``error`` event.
* ``gridgen_http_request_duration_seconds{route}``: from the request's arrival to the
  end of its response.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._stats import LATENCY_BUCKETS
from ..metrics import RunnerCollector
from .request_ids import current_request

__all__ = ["HttpMetrics", "add_metrics"]

_BY_STATUS = {
    404: "not_found", 405: "not_found", 413: "too_large", 422: "invalid", 499: "cancelled", 503: "closed", 504: "timeout",
}


def _outcome(status: int, noted: str | None) -> str:
    if noted is not None:
        return noted
    if status < 400:
        return "ok"
    return _BY_STATUS.get(status, "error")


class HttpMetrics:
    """ASGI middleware counting each HTTP request when its response ends (inside
    :class:`~gridgen.server.request_ids.RequestIds`, whose context says the outcome)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes
        self.requests = Counter(
            "gridgen_http_requests", "HTTP requests by route, outcome and status class",
            ["route", "outcome", "status_class"], registry=registry,
        )
        self.seconds = Histogram(
            "gridgen_http_request_duration_seconds", "Seconds from an HTTP request's arrival to the end of its response",
            ["route"], buckets=LATENCY_BUCKETS, registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            context = current_request()
            outcome = _outcome(status, None if context is None else context.outcome)
            self.requests.labels(route, outcome, f"{min(status, 599) // 100}xx").inc()
            self.seconds.labels(route).observe(time.perf_counter() - started)


def add_metrics(app: FastAPI, runner: Any) -> CollectorRegistry:
    """Register the runner's and the HTTP metrics in a new registry, serve it at ``GET
    /metrics`` and count requests (call after every route is added). Returns the registry."""
    registry = CollectorRegistry()
    registry.register(RunnerCollector(runner))
    ProcessCollector(registry=registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = frozenset(getattr(route, "path", "") for route in app.routes) - {""}
    app.add_middleware(HttpMetrics, registry=registry, routes=routes)
    app.state.metrics_registry = registry
    return registry
