"""HTTP request counts and latencies per route, for `/metrics`.

`broker_http_requests_total{route,method,status}` (429s included) and
`broker_http_request_duration_seconds{route,method}` (a histogram). The route is the URL rule
(`/api/v1/grants/<grant_id>/<action>`), never the raw path, so labels stay few. Under gunicorn
with several workers, set PROMETHEUS_MULTIPROC_DIR (an empty directory, wiped at each start) so
every worker's numbers are summed at scrape time; otherwise each worker reports its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

EXTENSION = "broker.httpmetrics"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class HttpMetrics:
    """This app's request counter and latency histogram (in their own registry)."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram


def init_app(app: Flask) -> None:
    """Count and time every request."""
    registry = CollectorRegistry(auto_describe=True)
    found = HttpMetrics(
        registry,
        Counter(
            "broker_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        ),
        Histogram(
            "broker_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=BUCKETS,
            registry=registry,
        ),
    )
    app.extensions[EXTENSION] = found

    @app.before_request
    def _start_timer() -> None:
        g.http_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("http_started")
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        found.requests.labels(route, request.method, str(response.status_code)).inc()
        if started is not None:
            found.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response


def http_collectors(app: Flask) -> Iterable[Any]:
    """What `/metrics` serves for HTTP: every worker's numbers, or this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return [merged]
    found: HttpMetrics | None = app.extensions.get(EXTENSION)
    return [found.registry] if found is not None else []
