"""A service's operations (service_kit.http.contract) as Flask routes: each request is read from
where its operation says, validated by its model, handed to the service's hooks
(ModelService.handle), and the reply sent in the media type the caller prefers among those the
operation declares. Every refusal is an ApiError: JSON, with the status the contract gives it."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, g, request
from pydantic import BaseModel, ValidationError

from service_kit.core.service import Binary, ModelService
from service_kit.http.contract import QUERY, Operation, is_raw
from service_kit.http.errors import ApiError
from service_kit.http.inputs import json_object, request_body

JSON = "application/json"
# What holding a JSON body costs, in multiples of its size: the bytes, the text, the parsed value
# and what a base64 field decodes to.
JSON_BODY_COPIES = 5


def register_operations(app: Flask, service: ModelService) -> None:
    for operation in service.operations:
        app.add_url_rule(operation.path, operation.operation_id, _view(service, operation),
                         methods=[operation.method])


def _view(service: ModelService, operation: Operation):
    # Sizing the body reads three headers: only for a service that holds something while it reads.
    sized = type(service).room_for_body is not ModelService.room_for_body

    def view() -> Response:
        incoming = request._get_current_object()  # a proxy looks the context up at every use
        budget = g.budget  # read once, in front of Flask (service_kit.http.admission)
        with service.room_for_body(body_bytes_needed(incoming) if sized else 0, budget.deadline):
            validated = read_request(operation, incoming, service.settings)
            media_type = negotiate(operation, incoming)
            reply = service.handle(validated, operation.replies[media_type], budget, operation.encode)
            return as_response(reply, media_type)

    view.__name__ = operation.operation_id
    view.__doc__ = operation.summary
    return view


def body_bytes_needed(incoming: Request) -> int:
    """What reading and parsing the request's body (or query) holds at most, from its declared
    size, before it is read."""
    if incoming.method == "GET":
        return 4 * len(incoming.query_string)
    limit = incoming.max_content_length or 0
    length = min(incoming.content_length if incoming.content_length is not None else limit, limit)
    return JSON_BODY_COPIES * length if incoming.mimetype == JSON else length


def read_request(operation: Operation, incoming: Request, settings: Any) -> Any:
    """The operation's request model, from the query or the body; 415 for a body of a media type
    it does not take, 400/413/422 (as the model says) for one that does not validate."""
    if operation.method == "GET":
        source, data = QUERY, {k: v for k, v in incoming.args.items() if k != "format" or len(operation.replies) < 2}
    else:
        source = body_source(operation, incoming.mimetype)
        if source is None:
            raise ApiError(415, "unsupported_media_type",
                           f"send the body as {' or '.join(m for m in operation.request if m != QUERY)}")
        if source == JSON:
            return _read_json(operation, incoming, settings)
        data = _body_fields(operation, source, incoming)
    try:
        return operation.adapter(source).validate_python(data, context={"settings": settings})
    except ValidationError as error:
        raise refusal(error) from None


def _read_json(operation: Operation, incoming: Request, settings: Any) -> Any:
    """A JSON object parsed and validated in one pass by pydantic's own parser (a third of the
    cost of parsing it to a dict first). What that parser refuses and JSON allows (an escaped
    lone surrogate: its own error code downstream) and what is not an object (invalid_json's
    messages) go the slow way, through the same dict route as before."""
    adapter = operation.adapter(JSON)
    context = {"settings": settings}
    body = request_body(incoming)
    if body.lstrip()[:1] == b"{":
        try:
            return adapter.validate_json(body, context=context)
        except ValidationError as error:
            if error.errors(include_url=False)[0]["type"] != "json_invalid":
                raise refusal(error) from None
    try:
        return adapter.validate_python(json_object(body), context=context)
    except ValidationError as error:
        raise refusal(error) from None


def body_source(operation: Operation, mimetype: str) -> str | None:
    """Which of the operation's body media types this Content-Type is (`image/*` takes any image)."""
    if operation.json_whatever_the_content_type:
        return JSON
    for media_type in operation.request:
        if media_type == mimetype or (media_type.endswith("/*") and mimetype.startswith(media_type[:-1])):
            return media_type
    return None


def _body_fields(operation: Operation, source: str, incoming: Request) -> Any:
    if is_raw(source):  # the model's one field
        [field] = operation.request[source].model_fields
        return {field: incoming.get_data()}
    return {**incoming.form.to_dict(), **{name: upload.read() for name, upload in incoming.files.items()}}


def negotiate(operation: Operation, incoming: Request) -> str:
    """The reply's media type: `?format=<subtype>` if the operation has it, else the caller's
    Accept among the operation's replies, the first on a tie."""
    offered = list(operation.replies)
    if len(offered) == 1:
        return offered[0]
    wanted = incoming.args.get("format")
    if wanted is not None:
        for media_type in offered:
            if media_type.split("/")[1] == wanted:
                return media_type
        raise ApiError(400, "invalid_field", f"format must be one of {', '.join(m.split('/')[1] for m in offered)}")
    return incoming.accept_mimetypes.best_match(offered, default=offered[0]) or offered[0]


def as_response(reply: Any, media_type: str) -> Response:
    if isinstance(reply, Binary):
        return Response(reply.data, mimetype=media_type, headers=reply.headers)
    if isinstance(reply, BaseModel):
        return Response(reply.model_dump_json(), mimetype=JSON)
    raise TypeError(f"encode returned {type(reply).__name__}: a reply model or Binary")


def refusal(error: ValidationError) -> ApiError:
    """The first thing wrong with a request, as our error codes: a field the contract refuses with
    a code of its own (service_kit.http.contract.refuse) keeps it; a missing field is
    `missing_field`, anything else `invalid_field`."""
    first = error.errors(include_url=False)[0]
    where = _field_name(first["loc"])
    context = first.get("ctx") or {}
    if "status" in context:
        return ApiError(context["status"], first["type"], f"{where} {first['msg']}" if where else first["msg"])
    if first["type"] == "missing":
        return ApiError(400, "missing_field", f"{where} is required")
    if first["type"] == "extra_forbidden":
        return ApiError(400, "invalid_field", f"{where} is not a field of this request")
    return ApiError(400, "invalid_field", f"{where or 'the request'}: {first['msg']}")


def _field_name(location: tuple) -> str:
    """("lines", 3) -> lines[3]; a union member's tag (contract.union_tag) is left out."""
    name = ""
    for part in location:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not part.startswith("{"):
            name += f".{part}" if name else part
    return name
