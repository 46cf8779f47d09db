"""Prometheus metrics that add up across gunicorn workers.

Each worker is its own process; with PROMETHEUS_MULTIPROC_DIR set (service_kit.gunicorn_base does
it), every worker writes its samples there and `/metrics` sums them, so one scrape sees the
whole instance. Without it (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["route", "method", "status"])
HTTP_LATENCY = Histogram("http_request_duration_seconds", "Time to answer an HTTP request",
                         ["route", "method"], buckets=_LATENCY_BUCKETS)
MODEL_SERVER_LATENCY = Histogram("model_server_request_duration_seconds", "Time of one gRPC call to the model server",
                                 ["model", "method"], buckets=_LATENCY_BUCKETS)
MODEL_SERVER_ERRORS = Counter("model_server_errors_total", "Failed gRPC calls to the model server",
                              ["model", "method", "code"])
MODEL_BATCH_SIZE = Histogram("model_request_batch_size", "Examples sent in one Predict call",
                             ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128))


def observe_model_call(method: str, model: str, seconds: float, code: str) -> None:
    """tfserving_client's observer hook."""
    MODEL_SERVER_LATENCY.labels(model, method).observe(seconds)
    if code != "OK":
        MODEL_SERVER_ERRORS.labels(model, method, code).inc()


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
