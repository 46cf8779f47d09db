"""Prometheus metrics that add up across gunicorn workers.

Each worker is its own process; with PROMETHEUS_MULTIPROC_DIR set (service_kit.http.gunicorn_config does
it), every worker writes its samples there and `/metrics` sums them, so one scrape sees the
whole instance. Without it (tests, a single process) the default registry is used.

Workers exit (recycled by max_requests where set, killed, timed out), each leaving its files; a scrape reads
every file (prometheus_client issues #204, #367: thousands of files, seconds per scrape). So when a
worker exits, its counts are added into one archive file per metric type and its files removed:
the totals stay exact and the number of files stays that of the live workers. A lock shared with
the scrape makes the move invisible to it (never counted twice, never missing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.mmap_dict import MmapedDict

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
# Why each batch left (service_kit.core.batch_rules.RELEASE_REASONS), how full it was, how long each
# example waited for it, and what was refused before any model work (service_kit.core.refusals.SHED_REASONS).
MODEL_BATCH_RELEASES = Counter("model_batch_releases_total", "Batches sent, by why they left", ["model", "reason"])
MODEL_BATCH_FILL = Histogram("model_batch_fill_ratio", "Examples in a batch / the largest batch allowed",
                             ["model"], buckets=(0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0))
MODEL_QUEUE_WAIT = Histogram("model_queue_wait_seconds", "Time an example waited in the batcher's queue",
                             ["model"], buckets=(0.0005, *_LATENCY_BUCKETS))
MODEL_REQUESTS_SHED = Counter("model_requests_shed_total", "Requests refused before any model work, by why",
                              ["model", "reason"])


class BatchMetrics:
    """service_kit.core.micro_batcher's observer, as Prometheus metrics of one model."""

    def __init__(self, model: str):
        self.model = model
        self._fill = MODEL_BATCH_FILL.labels(model)
        self._wait = MODEL_QUEUE_WAIT.labels(model)

    def released(self, reason: str, size: int, max_size: int) -> None:
        MODEL_BATCH_RELEASES.labels(self.model, reason).inc()
        self._fill.observe(size / max_size)

    def waited(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def shed(self, reason: str, requests: int) -> None:
        MODEL_REQUESTS_SHED.labels(self.model, reason).inc(requests)


def observe_model_call(method: str, model: str, seconds: float, code: str) -> None:
    """tfserving_client's observer hook."""
    MODEL_SERVER_LATENCY.labels(model, method).observe(seconds)
    if code != "OK":
        MODEL_SERVER_ERRORS.labels(model, method, code).inc()


def exposition() -> tuple[bytes, str]:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        with _files_locked(directory, fcntl.LOCK_SH):
            return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def archive_dead_worker(pid: int, directory: str | None = None) -> None:
    """Fold an exited worker's counters and histograms into the archive files, remove its files
    (the gunicorn master calls this when a worker exits)."""
    directory = directory or os.environ["PROMETHEUS_MULTIPROC_DIR"]
    with _files_locked(directory, fcntl.LOCK_EX):
        for kind in ("counter", "histogram"):
            dead = Path(directory, f"{kind}_{pid}.db")
            if not dead.exists():
                continue
            archive = MmapedDict(str(Path(directory, f"{kind}_archive.db")))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
            finally:
                archive.close()
            dead.unlink()
    multiprocess.mark_process_dead(pid, directory)  # its live gauges


@contextlib.contextmanager
def _files_locked(directory: str, mode: int) -> Iterator[None]:
    with open(os.path.join(directory, "files.lock"), "a") as lock:
        fcntl.flock(lock, mode)
        yield


# A model's rollout as this worker follows it (service_kit.core.rollout; model_rollout's controller
# reads these from every instance): its stage, the calls asked of each version, their time, and
# what shadowing compared or shed.
ROLLOUT_STAGE = Gauge("rollout_stage", "1 for the stage of the model's rollout this worker follows",
                      ["model", "stage"], multiprocess_mode="livemax")
ROLLOUT_CALLS = Counter("rollout_calls_total", "Predict calls during a rollout, by the part each played",
                        ["model", "version", "role", "outcome"])
ROLLOUT_CALL_SECONDS = Histogram("rollout_call_seconds", "Time of one Predict call during a rollout",
                                 ["model", "role"], buckets=_LATENCY_BUCKETS)
ROLLOUT_SHADOW_COMPARED = Counter("rollout_shadow_compared_total",
                                  "Answers of the candidate compared with the live ones",
                                  ["model", "version", "agreed"])
ROLLOUT_SHADOW_DISTANCE = Counter("rollout_shadow_distance_total", "Sum of the compared answers' distances",
                                  ["model", "version"])
ROLLOUT_SHADOW_SHED = Counter("rollout_shadow_shed_total", "Shadow calls not made, by why", ["model", "reason"])
