"""Parsing of caller input shared by the services; every failure is an ApiError, never a 500."""

from __future__ import annotations

from typing import Any

from flask import Request, current_app

from service_kit.http.errors import ApiError


def request_body(request: Request) -> bytes:
    """The body's bytes. Read straight from the WSGI input when its length is declared and within
    the limit (werkzeug's get_data wraps the stream first: 9 us against 3 us, measured); otherwise
    werkzeug's way, which answers 413 for a declared length over the limit and reads a chunked body.
    Read it once: the input is consumed."""
    length = request.content_length
    limit = request.max_content_length
    if length is None or (limit is not None and length > limit):
        return request.get_data()
    return request.environ["wsgi.input"].read(length)


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; broken JSON, or JSON that is not an object, is a 400."""
    try:
        value = current_app.json.loads(body)
    except (ValueError, RecursionError):  # json's parser recurses once per nesting level: [[[[...]]]] would be a 500
        value = None
    if value is None:
        raise ApiError(400, "invalid_json", "the body is not valid JSON")
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return value
