"""The Flask app every service starts from: request ids, JSON logs, metrics, health, errors."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid

from flask import Flask, Response, current_app, g, jsonify, request

from service_kit import metrics
from service_kit.errors import register_error_handlers
from service_kit.settings import ServiceSettings
from tfserving_client import ModelServerClient, ModelServerError

access_log = logging.getLogger("service_kit.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_service_app(import_name: str, settings: ServiceSettings,
                       client: ModelServerClient | None = None) -> Flask:
    """A Flask app with the shared routes; the service registers its own blueprint on it."""
    app = Flask(import_name)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # Chinese labels and messages stay readable
    app.json.sort_keys = False
    app.extensions["settings"] = settings
    app.extensions["model_client"] = client or ModelServerClient(
        settings.tfserving_address,
        timeout_seconds=settings.model_timeout_seconds,
        retries=settings.model_retries,
        observer=metrics.observe_model_call,
    )
    app.extensions["readiness"] = Readiness(app.extensions["model_client"], settings)
    register_error_handlers(app, settings.retry_after_seconds)
    _register_request_bookkeeping(app)
    _register_health_routes(app)
    return app


def model_client() -> ModelServerClient:
    return current_app.extensions["model_client"]


class Readiness:
    """Is the model AVAILABLE in the model server? Cached briefly: probes and nginx may ask often."""

    def __init__(self, client: ModelServerClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._answer: tuple[bool, dict] = (False, {})

    def check(self) -> tuple[bool, dict]:
        with self._lock:
            if time.monotonic() - self._checked_at < self.settings.readiness_cache_seconds:
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
        """The process answers; says nothing about the model (that is /readyz)."""
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
    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def finish(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "<unmatched>"
        metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(route, request.method).observe(seconds)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if _worth_a_log_line(route, response.status_code, seconds, current_app.extensions["settings"]):
            access_log.info("request", extra={
                "request_id": g.get("request_id"), "method": request.method, "path": request.path,
                "route": route, "status": response.status_code, "duration_ms": round(seconds * 1000, 2),
                "remote": request.headers.get("X-Forwarded-For", request.remote_addr),
            })
        return response


def _worth_a_log_line(route: str, status: int, seconds: float, settings: ServiceSettings) -> bool:
    if status >= 400 or seconds * 1000 >= settings.access_log_slow_ms:
        return True
    return settings.access_log_all and route not in ("/healthz", "/readyz", "/metrics")
