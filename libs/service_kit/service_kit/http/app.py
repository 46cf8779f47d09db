"""The Flask app every service runs in: its operations (service_kit.http.routes), request ids, JSON
logs, metrics, health (service_kit.http.health), errors; with the request's budget read in front of
it (service_kit.http.admission)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from flask import Flask, Response, current_app, g, request

from service_kit.core import metrics
from service_kit.core.service import ModelService
from service_kit.core.settings import ServiceSettings
from service_kit.http.admission import Admission, budget_of, method_label
from service_kit.http.errors import register_error_handlers, request_id_of
from service_kit.http.health import Readiness, register_health_routes
from service_kit.http.json_provider import OrjsonProvider
from service_kit.http.routes import register_operations
from service_roster import ROSTER_FILE, entry_of, read_service, service_class
from tfserving_client import ModelServerClient

access_log = logging.getLogger("service_kit.access")


def service_app(service_class: type[ModelService], settings: ServiceSettings | None = None,
                client: ModelServerClient | None = None) -> Flask:
    """The app of one service: its class of hooks, with its settings (default: from the
    environment) and a model server client (default: a real one, to TFSERVING_GRPC_ADDRESS)."""
    settings = (settings or service_class.settings_class.from_env()).with_roster_defaults(entry_of(service_class))
    app = create_service_app(service_class.__module__, settings, client)
    service = app.extensions["service"] = service_class(app.extensions["model_client"], settings)
    service.setup()
    register_operations(app, service)
    return app


def roster_app() -> Flask:
    """gunicorn's app: the service its roster entry (./service.toml) names."""
    return service_app(service_class(read_service(Path(ROSTER_FILE).resolve())))


class ServiceFlask(Flask):
    """Flask, asking once per function whether it is a coroutine function: ensure_sync asks inspect
    for every hook and view of every request (four a request, ~1 us each), and the answer for a
    function does not change."""

    def ensure_sync(self, func):  # type: ignore[override]
        try:
            return self._synced[func]
        except AttributeError:
            self._synced: dict = {}
        except KeyError:
            pass
        self._synced[func] = synced = super().ensure_sync(func)
        return synced


def create_service_app(import_name: str, settings: ServiceSettings,
                       client: ModelServerClient | None = None) -> Flask:
    """A Flask app with the shared routes and none of a service's (service_app adds them)."""
    settings = settings.with_roster_defaults(None)
    app = ServiceFlask(import_name)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = OrjsonProvider(app)  # Chinese labels and messages stay readable; keys keep their order
    app.extensions["settings"] = settings
    app.extensions["model_client"] = client or ModelServerClient(
        settings.tfserving_address,
        timeout_seconds=settings.model_timeout_seconds,
        retries=settings.model_retries,
        observer=metrics.observe_model_call,
    )
    app.extensions["readiness"] = Readiness(app.extensions["model_client"], settings)
    register_error_handlers(app, settings.retry_after_seconds, settings.model_name)
    _register_request_bookkeeping(app)
    register_health_routes(app)
    app.wsgi_app = Admission(app, settings)
    return app


def _register_request_bookkeeping(app: Flask) -> None:
    # Flask's `request` and `g` are proxies: each use looks the context up again (~1.3 us, 26 uses a
    # request). Each hook looks them up once.
    @app.before_request
    def start() -> None:
        incoming, store = request._get_current_object(), g._get_current_object()
        store.started = time.perf_counter()
        headers = incoming.headers
        store.request_id = request_id_of(headers.get("X-Request-ID", ""))
        if incoming.routing_exception is not None:  # 404 or 405 whatever the request's deadline says
            return
        store.budget = budget_of(incoming.environ)  # read in front of Flask (Admission); 400 if its header was bad

    @app.after_request
    def finish(response: Response) -> Response:
        incoming, store = request._get_current_object(), g._get_current_object()
        seconds = time.perf_counter() - store.get("started", time.perf_counter())
        budget = store.get("budget")
        if budget is not None:
            response.headers["Server-Timing"] = budget.server_timing(time.monotonic())
        route = incoming.url_rule.rule if incoming.url_rule else "<unmatched>"
        method = method_label(incoming.method)
        status = response.status_code
        answered, latency = _http_metrics(route, method, status)
        answered.inc()
        latency.observe(seconds)
        request_id = store.get("request_id", "")
        response.headers["X-Request-ID"] = request_id
        settings = current_app.extensions["settings"]
        if not store.get("shed") and _worth_a_log_line(route, status, seconds, settings):
            access_log.info("request", extra={
                "request_id": request_id, "method": incoming.method, "path": incoming.path,
                "route": route, "status": status, "duration_ms": round(seconds * 1000, 2),
                # The address nginx saw (it sets X-Real-IP, replacing any a client sent); the first
                # entry of X-Forwarded-For is whatever the client wrote there.
                "remote": incoming.headers.get("X-Real-IP", incoming.remote_addr),
            })
        return response


@functools.lru_cache(maxsize=4096)
def _http_metrics(route: str, method: str, status: int) -> tuple:
    """A route's request counter and latency histogram: prometheus_client's labels() takes a lock and
    builds its key at every call (3 us a request). Filled in the process that serves (multiprocess
    mode keeps each worker's values in its own files)."""
    return metrics.HTTP_REQUESTS.labels(route, method, str(status)), metrics.HTTP_LATENCY.labels(route, method)


def _worth_a_log_line(route: str, status: int, seconds: float, settings: ServiceSettings) -> bool:
    if status >= 400 or seconds * 1000 >= settings.access_log_slow_ms:
        return True
    return settings.access_log_all and route not in ("/healthz", "/readyz", "/metrics")
