"""The gunicorn config of every API service, in containers and in local mode alike:

    gunicorn -c python:service_kit.http.gunicorn_config       (in the service's folder, or /app in its image)

The service is the roster entry in the working directory (service.toml): its package gives the
app, its preload runs here in the master. Each value can be changed per deployment with the
environment variable named beside it.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import glogging

from service_kit.core.settings import ServiceSettings
from service_kit.http.logs import LOGCONFIG
from service_roster import ROSTER_FILE, read_service, run_preload

# gRPC's fork handlers off, before the workers load gRPC: a worker forks helpers (vision-api's decoding
# children) while its channel has threads, and with the handlers on (grpcio 1.85's default) they ran in
# the forked child and aborted it (SIGABRT, "epoll_wait error: Bad file descriptor") before it could
# exec: 14 of 300 forks on an idle machine, 47-71 of 200 on a busy one. Nothing forked here uses gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

SERVICE = read_service(Path(ROSTER_FILE).resolve())
wsgi_app = "service_kit.http.app:roster_app()"
if SERVICE.preload:
    # Once, in the master: every worker shares those pages after fork instead of building its own
    # copy (jieba's dictionary is ~70 MB of Python objects); freezing keeps the garbage collector
    # from writing to, and so un-sharing, them.
    run_preload(SERVICE)
    gc.freeze()

bind = [os.environ.get("API_BIND", "0.0.0.0:8000")]
# gevent: one worker holds many slow connections while it waits on the model server. The work
# that is CPU-bound (JSON, jieba, OpenCV) wants about one worker per core.
worker_class = "service_kit.http.gunicorn_worker.GrpcGeventWorker"
workers = ServiceSettings.from_env().worker_processes()
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# A worker silent for this long is killed and replaced; requests have their own, shorter deadlines.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Idle keep-alive connections are closed after this long. Longer than nginx's upstream
# keepalive_timeout (4 s), so nginx closes them first and never reuses one gunicorn just closed;
# short, because a stopping worker waits for its idle connections too (up to graceful_timeout).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# No worker recycling by default. With one worker per instance a recycling worker stops taking
# connections, waits for its keep-alive ones, and only then is replaced: requests wait in the
# backlog meanwhile (same run, 50 connections: p99 61 ms without, 1,250 ms recycling every 4,000
# requests). Memory stays flat without it (bench/results/soak.md). Set a count to recycle anyway.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "0"))
# nginx bounds the request line and each header at 64 KB (large_client_header_buffers) and is
# the only way in; gunicorn's own 4 KB line limit would answer the documents' `GET ?img=<base64>`
# of a mid-sized image with a bare 414 that is not JSON.
limit_request_line = 0
limit_request_field_size = 0
# gunicorn's C parser (gunicorn_h1c, picohttpparser) when installed, as the API images have it;
# "python" for gunicorn's own.
http_parser = os.environ.get("GUNICORN_HTTP_PARSER", "auto")
# Workers build the app themselves, after gevent has patched them (see service_kit.http.gunicorn_worker).
preload_app = False
# Several instances run side by side in local mode; the control socket would be shared.
control_socket_disable = True
# The app writes the access lines (JSON, with the request id; see ACCESS_LOG_ALL); gunicorn's own
# lines are JSON too.
accesslog = None
errorlog = "-"
logconfig_dict = LOGCONFIG
logger_class = "service_kit.http.gunicorn_config.NoAccessLineLogger"


class NoAccessLineLogger(glogging.Logger):
    """gunicorn builds its access line whenever a log config is set, then drops it (its access
    logger is silenced); that cost ~7% of a worker's CPU at 1,600 req/s (bench/profile.py)."""

    def access(self, resp, req, environ, request_time) -> None:
        return None
# Metrics from all workers of this instance are summed at /metrics (see service_kit.core.metrics).
_own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="api-metrics-")


def on_starting(server) -> None:
    """Start every instance with empty metrics: old files would be counted again."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)


def child_exit(server, worker) -> None:
    from service_kit.core.metrics import archive_dead_worker

    archive_dead_worker(worker.pid)


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
