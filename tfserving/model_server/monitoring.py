"""TF Serving's Prometheus endpoint (--monitoring_config_file), with TF Serving's metric names, so
one dashboard and one scrape config read either server:

    :tensorflow:serving:request_count{model_name, status}            counter
    :tensorflow:serving:request_latency{model_name, API, entrypoint}  histogram, microseconds

and one of this server's own (TF Serving has no such metric):

    model_server_batching_expired_tasks_total{model_name}  counter: batched tasks dropped unrun,
                                                            their callers having given up

The config is TF Serving's text MonitoringConfig; only `prometheus_config { enable, path }`
exists in it. Written by hand (no prometheus_client) to keep the colon-led names and TF Serving's
bucket bounds exactly.
"""

from __future__ import annotations

import bisect
import collections
import re
import threading
from pathlib import Path

DEFAULT_PATH = "/monitoring/prometheus/metrics"
# TF Serving's request_latency buckets: ExponentialBuckets(10 us, x1.8, 33).
LATENCY_BOUNDS_US = [10 * 1.8 ** i for i in range(33)]
# Model names come from callers: past this many label sets, and for names longer than any a
# models.config would hold, requests are counted under model_name="(other)", so random names cannot
# grow the server's memory or the scrape (1,000 names of several MB each did, before the length cap).
MAX_LABEL_SETS = 1000
MAX_MODEL_NAME_CHARS = 256
OTHER = "(other)"


def read_monitoring_config(path: Path) -> str | None:
    """The metrics path when Prometheus export is enabled, else None."""
    text = re.sub(r"#.*", "", Path(path).read_text(encoding="utf-8"))
    block = re.fullmatch(r"\s*(?:prometheus_config\s*:?\s*\{(?P<body>[^}]*)\}\s*)?", text)
    if block is None:
        raise ValueError(f"{path}: only `prometheus_config {{ enable: ..., path: ... }}` is supported")
    fields = dict(re.findall(r'(\w+)\s*:\s*("[^"]*"|\w+)', block["body"] or ""))
    unknown = set(fields) - {"enable", "path"}
    if unknown:
        raise ValueError(f"{path}: unknown prometheus_config fields {sorted(unknown)}")
    if fields.get("enable", "false") not in ("true", "false"):
        raise ValueError(f"{path}: enable must be true or false")
    if fields.get("enable") != "true":
        return None
    return fields.get("path", '""').strip('"') or DEFAULT_PATH


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._latency: dict[tuple[str, str, str], list[float]] = {}
        self._expired_tasks: collections.Counter[str] = collections.Counter()  # by model; names from the config

    def observe(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        microseconds = seconds * 1e6
        with self._lock:
            if len(model) > MAX_MODEL_NAME_CHARS or \
                    (model, api, entrypoint) not in self._latency and len(self._latency) >= MAX_LABEL_SETS:
                model = OTHER
            self._requests[(model, status)] += 1
            buckets = self._latency.setdefault((model, api, entrypoint), [0.0] * (len(LATENCY_BOUNDS_US) + 3))
            buckets[bisect.bisect_left(LATENCY_BOUNDS_US, microseconds)] += 1
            buckets[-2] += microseconds
            buckets[-1] += 1

    def count_expired_task(self, model: str) -> None:
        with self._lock:
            self._expired_tasks[model] += 1

    def exposition(self) -> str:
        with self._lock:
            requests = dict(self._requests)
            latency = {key: list(values) for key, values in self._latency.items()}
            expired = dict(self._expired_tasks)
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        for (model, status), count in sorted(requests.items()):
            labels = f'model_name="{_escape(model)}",status="{status}"'
            lines.append(f":tensorflow:serving:request_count{{{labels}}} {count}")
        lines.append("# TYPE :tensorflow:serving:request_latency histogram")
        for (model, api, entrypoint), values in sorted(latency.items()):
            labels = f'model_name="{_escape(model)}",API="{api}",entrypoint="{entrypoint}"'
            running = 0.0
            for bound, count in zip([*LATENCY_BOUNDS_US, float("inf")], values):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f':tensorflow:serving:request_latency_bucket{{{labels},le="{le}"}} {int(running)}')
            # Exact: `:g` kept 6 digits (1.23457e+06 requests; a sum past 1 s lost its microseconds).
            lines.append(f":tensorflow:serving:request_latency_sum{{{labels}}} {values[-2]!r}")
            lines.append(f":tensorflow:serving:request_latency_count{{{labels}}} {int(values[-1])}")
        lines.append("# TYPE model_server_batching_expired_tasks_total counter")
        for model, count in sorted(expired.items()):
            lines.append(f'model_server_batching_expired_tasks_total{{model_name="{_escape(model)}"}} {count}')
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A label value as the Prometheus text format wants it: a caller's model name may hold anything."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


METRICS = Metrics()
