"""Every failure leaves as `{"error": {"code", "message", "request_id"}}` with the right status,
never as an HTML page or a stack trace."""

from __future__ import annotations

import logging
import re
import uuid

import grpc
from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from service_kit.core import deadlines, metrics
from service_kit.core.refusals import (
    Busy,
    DeadlineExceeded,
    InputError,
    InputTooLarge,
    InvalidInput,
    InvalidTimeout,
    Shed,
    UnsupportedInput,
    UnusableInput,
)
from tfserving_client import ModelServerError

log = logging.getLogger("service_kit.http.errors")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(incoming: str) -> str:
    """The caller's (or nginx's) request id if it is a plain token, else a new one."""
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


class ApiError(Exception):
    """A request the service refuses; `code` is a stable machine-readable slug."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}


# What model code says of an input, as HTTP: the one place that knows.
_INPUT_STATUS = {InvalidInput: 400, InputTooLarge: 413, UnsupportedInput: 415, UnusableInput: 422}


def from_input_error(error: InputError) -> ApiError:
    status = next((status for kind, status in _INPUT_STATUS.items() if isinstance(error, kind)), 400)
    return ApiError(status, error.code, error.message)


def from_model_server(error: ModelServerError, retry_after_seconds: int) -> ApiError:
    """The model server's gRPC status as the HTTP answer a caller can act on."""
    retry = {"Retry-After": str(retry_after_seconds)}
    # CANCELLED: a model server stopping ended the call unanswered (ours end at their deadline).
    if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
        return ApiError(503, "model_unavailable", "the model server is unavailable; retry shortly", retry)
    if error.code == grpc.StatusCode.NOT_FOUND:
        return ApiError(503, "model_not_loaded", f"the model is not loaded: {error.details}", retry)
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(504, "model_timeout", "the model did not answer within its deadline")
    return ApiError(502, "model_error", f"the model server failed: {error.code.name}")


# Said with every refusal for want of time.
DEADLINE_ADVICE = f"retry shortly or allow more time ({deadlines.HEADER})"


def error_body(code: str, message: str, request_id: str | None) -> dict:
    """The one shape of every error answer."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


# Refusals for want of time or room, before any model work: they come in floods, exactly when
# CPU is short, so they are counted (model_requests_shed_total, http_requests_total) and never
# logged one line each (service_kit.http.app); a line cost ~7% of a worker's CPU at one per request.
SHED_CODES = frozenset({"deadline_unreachable", "overloaded", "busy"})


def error_response(error: ApiError):
    if error.code in SHED_CODES:
        g.shed = True
    response = jsonify(error_body(error.code, error.message, g.get("request_id")))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def register_error_handlers(app: Flask, retry_after_seconds: int, model_name: str = "") -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        return error_response(error)

    @app.errorhandler(InputError)
    def input_error(error: InputError):
        return error_response(from_input_error(error))

    @app.errorhandler(Busy)
    def busy(error: Busy):
        metrics.MODEL_REQUESTS_SHED.labels(model_name, "busy").inc()
        return error_response(ApiError(503, "busy", str(error), {"Retry-After": str(retry_after_seconds)}))

    @app.errorhandler(ModelServerError)
    def model_server_error(error: ModelServerError):
        log.warning("model server call failed: %s", error)
        return error_response(from_model_server(error, retry_after_seconds))

    @app.errorhandler(Shed)
    def shed(error: Shed):
        # Refused before any model work (SHED_CODES); the batcher counted it.
        retry = {"Retry-After": str(retry_after_seconds)}
        if error.reason == "queue_full":
            return error_response(ApiError(503, "overloaded", "too many requests wait for the model; retry shortly",
                                           retry))
        return error_response(ApiError(503, "deadline_unreachable", f"{error}; {DEADLINE_ADVICE}", retry))

    @app.errorhandler(InvalidTimeout)
    def invalid_timeout(error: InvalidTimeout):
        return error_response(ApiError(400, "invalid_timeout", str(error)))

    @app.errorhandler(DeadlineExceeded)
    def deadline_exceeded(error: DeadlineExceeded):
        return error_response(ApiError(504, "model_timeout", "the model did not answer within its deadline"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        headers = {}
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return error_response(ApiError(status, code, error.description or error.name, headers))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "internal error; see the service log"))
