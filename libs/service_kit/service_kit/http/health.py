"""The routes every service answers whatever its model does: /healthz (the process), /readyz (its
model, through this worker's channel) and /metrics."""

from __future__ import annotations

import threading
import time

from flask import Flask, Response, current_app, jsonify

from service_kit.core import metrics
from service_kit.core.settings import ServiceSettings
from tfserving_client import ModelServerClient, ModelServerError


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


def register_health_routes(app: Flask) -> None:
    @app.get("/healthz")
    def healthz():
        """The process answers, and its batcher runs (a worker whose batcher stopped would answer
        no model request again: 503, so that the orchestrator replaces it); says nothing about the
        model (that is /readyz)."""
        service = current_app.extensions.get("service")
        if service is not None and not service.model_call.serving():
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
