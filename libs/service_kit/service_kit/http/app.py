"""The Flask app every service runs in: its operations (service_kit.http.routes), request ids, JSON
logs, metrics, health, errors."""

from __future__ import annotations

import functools
import json
import logging
import re
import socket
import threading
import time
import uuid
from pathlib import Path

from flask import Flask, Response, current_app, g, jsonify, request

from service_kit.core import deadlines, metrics
from service_kit.core.model_endpoint import ModelEndpoint
from service_kit.core.service import ModelService
from service_kit.core.settings import ServiceSettings
from service_kit.http.errors import DEADLINE_ADVICE, error_body, register_error_handlers
from service_kit.http.json_provider import OrjsonProvider
from service_kit.http.routes import register_operations
from service_roster import ROSTER_FILE, read_service, service_class
from tfserving_client import ModelServerClient, ModelServerError

access_log = logging.getLogger("service_kit.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def service_app(service_class: type[ModelService], settings: ServiceSettings | None = None,
                client: ModelServerClient | None = None) -> Flask:
    """The app of one service: its class of hooks, with its settings (default: from the
    environment) and a model server client (default: a real one, to TFSERVING_GRPC_ADDRESS)."""
    settings = settings or service_class.settings_class.from_env()
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
    _register_health_routes(app)
    if settings.model_batching == "deadline":
        app.wsgi_app = RefuseLateArrivals(app, settings)
    return app


class RefuseLateArrivals:
    """WSGI, in front of Flask: a request that waited so long for this worker (X-Request-Start,
    set by nginx) that it would miss its deadline, given what preparing it and the model's queue
    take now (the service's ModelEndpoint knows both), is refused here with 503 before anything
    else is done for it. A refusal must cost a fraction of an answer, or an overload is spent
    refusing; and the prediction is made afresh from the queue each time, never from answers alone
    (an estimate fed only by the requests it lets in stops being corrected once it refuses all)."""

    def __init__(self, app: Flask, settings: ServiceSettings):
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.settings = settings
        self.margin = settings.model_deadline_margin_ms / 1000
        self.retry_after = str(settings.retry_after_seconds)
        self._endpoint: ModelEndpoint | None = None

    def endpoint(self) -> ModelEndpoint | None:
        if self._endpoint is None:
            self._endpoint = model_endpoint(self.app)
        return self._endpoint

    def __call__(self, environ, start_response):
        waited = deadlines.waited_before(environ.get("HTTP_X_REQUEST_START"))
        endpoint = self.endpoint()
        if waited and endpoint is not None and environ.get("PATH_INFO") not in _ALWAYS_ANSWERED \
                and environ.get("REQUEST_METHOD") in _MODEL_METHODS:
            try:
                timeout = deadlines.timeout_seconds(environ.get("HTTP_X_REQUEST_TIMEOUT_MS"), self.settings)
            except deadlines.InvalidTimeout:
                return self.wsgi_app(environ, start_response)  # Flask answers it: 400
            needed = endpoint.predicted_seconds(time.monotonic())
            if timeout - waited < needed + self.margin:
                return self.refuse(environ, start_response, waited, timeout, needed)
        return self.wsgi_app(environ, start_response)

    def refuse(self, environ, start_response, waited: float, timeout: float, needed: float):
        metrics.MODEL_REQUESTS_SHED.labels(self.settings.model_name, "late_arrival").inc()
        metrics.HTTP_REQUESTS.labels(_REFUSED_ROUTE, method_label(environ.get("REQUEST_METHOD", "")), "503").inc()
        request_id = _request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        message = (f"the request waited {1000 * waited:.0f} ms for a worker; answering it takes about "
                   f"{1000 * needed:.0f} ms now, past its {1000 * timeout:.0f} ms; {DEADLINE_ADVICE}")
        body = json.dumps(error_body("deadline_unreachable", message, request_id)).encode()
        start_response("503 SERVICE UNAVAILABLE", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Retry-After", self.retry_after), ("X-Request-ID", request_id), ("Server-Timing", "total;dur=0")])
        return [body]


# Answered whatever the load: probes and scrapes must see an overloaded instance as alive.
_ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})
# The methods a model route answers; any other is Flask's to refuse (405), whatever the load.
_MODEL_METHODS = frozenset({"GET", "POST"})
# http_requests_total's route label for requests refused before routing.
_REFUSED_ROUTE = "<refused on arrival>"
# The method label's values: a caller's made-up method is `other`, or each would add metric
# series to every scrape for the life of the process.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def model_endpoint(app: Flask) -> ModelEndpoint | None:
    """The app's service (service_app puts it in app.extensions["service"])."""
    return app.extensions.get("service")


def client_gone(sock: socket.socket) -> bool:
    """Whether the client closed its connection, as nginx itself tells (a peek that reads
    end-of-file); nginx closes its connection to us when its own client goes away. Bytes waiting
    (the next request on a kept-alive connection), or none yet, mean it still waits. The peek must
    not block: gevent's socket waits on EWOULDBLOCK unless its timeout is 0, so it is 0 meanwhile."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset by the peer, or already closed here
        return True
    finally:
        sock.settimeout(timeout)


def model_client() -> ModelServerClient:
    return current_app.extensions["model_client"]


class Readiness:
    """Is the model AVAILABLE in the model server, over this worker's channel? Cached briefly
    (probes and nginx may ask often), but a "ready" is not repeated once the channel knows the model
    server unreachable: its calls fail at once until it reconnects (issue 33: an instance said ready
    while its channel backed off, and answered 503 to every request)."""

    def __init__(self, client: ModelServerClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._answer: tuple[bool, dict] = (False, {})

    def check(self) -> tuple[bool, dict]:
        with self._lock:
            fresh = time.monotonic() - self._checked_at < self.settings.readiness_cache_seconds
            if fresh and not (self._answer[0] and self.client.connection_failing()):
                return self._answer
        answer = self._ask()
        with self._lock:
            self._checked_at, self._answer = time.monotonic(), answer
        return answer

    def _ask(self) -> tuple[bool, dict]:
        name = self.settings.model_name
        try:
            versions = self.client.model_status(name, timeout_seconds=min(2.0, self.settings.model_timeout_seconds))
        except ModelServerError as error:
            return False, {"model": name, "reason": error.code.name, "detail": error.details}
        available = sorted(v.version for v in versions if v.state == "AVAILABLE")
        detail = {"model": name, "available_versions": available,
                  "versions": {str(v.version): v.state for v in versions}}
        return bool(available), detail


def _register_health_routes(app: Flask) -> None:
    @app.get("/healthz")
    def healthz():
        """The process answers, and its batcher runs (a worker whose batcher stopped would answer
        no model request again: 503, so that the orchestrator replaces it); says nothing about the
        model (that is /readyz)."""
        endpoint = model_endpoint(current_app)
        if endpoint is not None and not endpoint.serving():
            response = jsonify(status="batcher_stopped")
            response.status_code = 503
            return response
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz():
        ready, detail = current_app.extensions["readiness"].check()
        response = jsonify(status="ready" if ready else "not_ready", **detail)
        if not ready:
            response.status_code = 503
            response.headers["Retry-After"] = str(current_app.extensions["settings"].retry_after_seconds)
        return response

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)


def _register_request_bookkeeping(app: Flask) -> None:
    # Flask's `request` and `g` are proxies: each use looks the context up again (~1.3 us, 26 uses a
    # request). Each hook looks them up once.
    @app.before_request
    def start() -> None:
        incoming, store = request._get_current_object(), g._get_current_object()
        store.started = time.perf_counter()
        headers = incoming.headers
        store.request_id = _request_id(headers.get("X-Request-ID", ""))
        if incoming.routing_exception is not None:  # 404 or 405 whatever the request's deadline says
            return
        sock = incoming.environ.get("gunicorn.socket")
        store.budget_token = deadlines.begin(headers.get(deadlines.HEADER), current_app.extensions["settings"],
                                             headers.get(deadlines.START_HEADER),
                                             functools.partial(client_gone, sock) if sock is not None else None)

    @app.teardown_request
    def forget_budget(_error: BaseException | None) -> None:
        token = g.pop("budget_token", None)
        if token is not None:
            deadlines.end(token)

    @app.after_request
    def finish(response: Response) -> Response:
        incoming, store = request._get_current_object(), g._get_current_object()
        seconds = time.perf_counter() - store.get("started", time.perf_counter())
        budget = deadlines.current() if "budget_token" in store else None
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


def _request_id(incoming: str) -> str:
    """The caller's (or nginx's) request id if it is a plain token, else a new one."""
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
