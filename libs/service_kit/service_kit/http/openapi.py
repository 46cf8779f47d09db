"""The OpenAPI 3.1 document of every roster service, written from their operations' request and reply
models (service_kit.http.contract): what nginx serves at /openapi.json. `./stack generate` writes
it (roster_files.docs); a test compares the committed file with what this makes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from service_kit.core.deadlines import HEADER as TIMEOUT_HEADER
from service_kit.http.contract import BINARY, QUERY, Operation, is_raw
from service_roster import Service, service_class

REF = "#/components/schemas/{model}"
_ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
_BINARY = {"type": "string", "format": "binary"}
# Statuses every model operation may answer, besides its own (Operation.errors), and why.
_KIT_ERRORS = {
    400: "malformed or missing fields, JSON or base64 (`invalid_json`, `invalid_base64`, `invalid_utf8`, "
         "`missing_field`, `invalid_field`), or a bad `X-Request-Timeout-Ms` (`invalid_timeout`)",
    413: "the body is over the route's limit (nginx: `payload_too_large`), or a field over a configured limit",
    502: "the model server failed otherwise (`model_error`), or no API instance could answer (nginx)",
    503: "refused before any model work: the model server is unavailable or has not loaded the model "
         "(`model_unavailable`, `model_not_loaded`), the worker's queue is full (`overloaded`), it has no room for "
         "the input now (`busy`), or the request could not be answered within its deadline "
         "(`deadline_unreachable`); retry after `Retry-After` seconds",
    504: "the model did not answer within the request's deadline (`model_timeout`)",
}
# What a body of the wrong media type gets, where an operation says nothing of 415 itself.
_WRONG_MEDIA_TYPE = "a body of another media type (`unsupported_media_type`)"
DESCRIPTION = (
    "Every error is JSON: `{\"error\": {\"code\", \"message\", \"request_id\"}}`; every answer carries `X-Request-ID`, "
    "and a model route's answer `Server-Timing` (ms spent in `preprocess`, `queue`, `model`, `postprocess`, "
    "`total`). A request may say how long it will wait (`X-Request-Timeout-Ms`); one that cannot be answered in "
    "time is refused early with 503 `deadline_unreachable`, never answered late.")


def document(services: list[Service]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _error_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for service in services:
        cls = service_class(service)
        settings = cls.settings_class.from_env({})  # the defaults, not this machine's environment
        for operation in cls.operations:
            paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
                operation, service, settings.model_timeout_seconds, schemas)
    models = ", ".join(f"`{service.model}` ({service.name})" for service in services)
    return {
        "openapi": "3.1.0",
        "info": {"title": "TensorFlow models over HTTP", "version": "1.0.0",
                 "description": f"Models: {models}. {DESCRIPTION}"},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def _operation(operation: Operation, service: Service, timeout_seconds: float,
               schemas: dict[str, Any]) -> dict[str, Any]:
    parameters = [{"name": TIMEOUT_HEADER, "in": "header", "required": False,
                   "description": f"how long the caller will wait, in whole milliseconds; at most "
                                  f"{timeout_seconds * 1000:.0f} is used",
                   "schema": {"type": "integer", "minimum": 1}}]
    if QUERY in operation.request:
        query = _schema(operation.request[QUERY], "validation", schemas, inline=True)
        for name, field in query["properties"].items():
            parameters.append({"name": name, "in": "query", "required": name in query.get("required", ()),
                               "description": field.get("description", ""), "schema": field})
    if len(operation.replies) > 1:
        subtypes = [media_type.split("/")[1] for media_type in operation.replies]
        parameters.append({"name": "format", "in": "query", "required": False,
                           "description": "the reply's media type, if not the one Accept prefers",
                           "schema": {"type": "string", "enum": subtypes}})
    spec: dict[str, Any] = {"operationId": operation.operation_id, "tags": [service.name],
                            "summary": operation.summary, "parameters": parameters}
    if operation.description:
        spec["description"] = operation.description
    bodies = {media_type: model for media_type, model in operation.request.items() if media_type != QUERY}
    if bodies:
        spec["requestBody"] = {"required": True, "content": {
            media_type: {"schema": _BINARY if is_raw(media_type) else _schema(model, "validation", schemas)}
            for media_type, model in bodies.items()}}
    ok = {media_type: {"schema": _BINARY if model is BINARY
                       else _schema(model, "serialization", schemas)}
          for media_type, model in operation.replies.items()}
    responses: dict[str, Any] = {"200": {"description": "the model's answer", "content": ok}}
    statuses = set(_KIT_ERRORS) | set(operation.errors) | ({415} if bodies else set())
    for status in sorted(statuses):
        reasons = [text for text in (_KIT_ERRORS.get(status), operation.errors.get(status)) if text]
        if status == 415 and 415 not in operation.errors:
            reasons = [_WRONG_MEDIA_TYPE]
        answer: dict[str, Any] = {"description": "; ".join(reasons),
                                  "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
        if status == 503:
            answer["headers"] = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
        responses[str(status)] = answer
    spec["responses"] = responses
    return spec


def _schema(model: Any, mode: str, schemas: dict[str, Any], inline: bool = False) -> dict[str, Any]:
    """A model's JSON Schema: a named model is a component (referred to), a union inline; the
    models it uses become components too."""
    schema = TypeAdapter(model).json_schema(ref_template=REF, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        _add(schemas, name, definition)
    if inline or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return schema
    _add(schemas, model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _add(schemas: dict[str, Any], name: str, definition: dict[str, Any]) -> None:
    if schemas.setdefault(name, definition) != definition:
        raise ValueError(f"two different request or reply models are both named {name}: rename one")


def _error_schema() -> dict[str, Any]:
    string = {"type": "string"}
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "request_id"],
        "properties": {"code": string, "message": string, "request_id": {"type": ["string", "null"]}}}}}
