"""In front of Flask (WSGI): each request's deadline read once from its headers, and a request that
arrived too late to be answered in time refused before anything else is done for it."""

from __future__ import annotations

import json
import socket
from typing import Any

from flask import Flask

from service_kit.core import deadlines, metrics
from service_kit.core.model_call import ModelCall
from service_kit.core.refusals import InvalidTimeout
from service_kit.core.settings import ServiceSettings
from service_kit.http.errors import DEADLINE_ADVICE, error_body, request_id_of

# Where the budget (or the InvalidTimeout its headers gave) waits for the app, in the WSGI environ.
BUDGET_KEY = "service_kit.budget"
# Answered whatever the load: probes and scrapes must see an overloaded instance as alive.
ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})
# The methods a model route answers; any other is Flask's to refuse (405), whatever the load.
_MODEL_METHODS = frozenset({"GET", "POST"})
# http_requests_total's route label for requests refused before routing.
REFUSED_ROUTE = "<refused on arrival>"
# The method label's values: a caller's made-up method is `other`, or each would add metric
# series to every scrape for the life of the process.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def budget_of(environ: dict[str, Any]) -> deadlines.RequestBudget:
    """The request's budget, as Admission read it; InvalidTimeout if its header was bad."""
    budget = environ[BUDGET_KEY]
    if isinstance(budget, InvalidTimeout):
        raise budget
    return budget


class Admission:
    """Reads the request's budget (service_kit.core.deadlines.read) and puts it in the environ; and
    in the deadline batching mode, refuses with 503 a request that waited so long for this worker
    (X-Request-Start, set by nginx) that it would miss its deadline, given what preparing it and the
    model's queue take now (the service's ModelCall knows both). A refusal must cost a fraction of
    an answer, or an overload is spent refusing; and the prediction is made afresh from the queue each
    time, never from answers alone (an estimate fed only by the requests it lets in stops being
    corrected once it refuses all)."""

    def __init__(self, app: Flask, settings: ServiceSettings):
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.settings = settings
        self.margin = settings.model_deadline_margin_ms / 1000
        self.retry_after = str(settings.retry_after_seconds)
        self._model_call: ModelCall | None = None

    @property
    def model_call(self) -> ModelCall | None:
        """The service's, in the deadline batching mode (service_app adds the service after this)."""
        if self._model_call is None and self.settings.model_batching == "deadline":
            service = self.app.extensions.get("service")
            self._model_call = service.model_call if service is not None else None
        return self._model_call

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        try:
            budget = deadlines.read(environ.get(deadlines.HEADER_KEY), environ.get(deadlines.START_HEADER_KEY),
                                    self.settings, (lambda: client_gone(sock)) if sock is not None else None)
        except InvalidTimeout as error:
            environ[BUDGET_KEY] = error  # Flask answers it: 400
            return self.wsgi_app(environ, start_response)
        environ[BUDGET_KEY] = budget
        model_call = self.model_call
        if model_call is not None and budget.arrived > budget.received \
                and environ.get("PATH_INFO") not in ALWAYS_ANSWERED and environ.get("REQUEST_METHOD") in _MODEL_METHODS:
            needed = model_call.predicted_seconds(budget.arrived)
            if budget.remaining(budget.arrived) < needed + self.margin:
                return self.refuse(environ, start_response, budget, needed)
        return self.wsgi_app(environ, start_response)

    def refuse(self, environ, start_response, budget: deadlines.RequestBudget, needed: float):
        metrics.MODEL_REQUESTS_SHED.labels(self.settings.model_name, "late_arrival").inc()
        metrics.HTTP_REQUESTS.labels(REFUSED_ROUTE, method_label(environ.get("REQUEST_METHOD", "")), "503").inc()
        request_id = request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        waited, timeout = budget.arrived - budget.received, budget.deadline - budget.received
        message = (f"the request waited {1000 * waited:.0f} ms for a worker; answering it takes about "
                   f"{1000 * needed:.0f} ms now, past its {1000 * timeout:.0f} ms; {DEADLINE_ADVICE}")
        body = json.dumps(error_body("deadline_unreachable", message, request_id)).encode()
        start_response("503 SERVICE UNAVAILABLE", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Retry-After", self.retry_after), ("X-Request-ID", request_id), ("Server-Timing", "total;dur=0")])
        return [body]


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
