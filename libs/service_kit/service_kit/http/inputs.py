"""Parsing of caller input shared by the services; every failure is an ApiError, never a 500."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Request

from service_kit.http.errors import ApiError


def decode_base64(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, padding optional (the documents' clients strip it)."""
    cleaned = "".join(text.split())
    cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{what} is not valid base64") from None


def json_body(request: Request, *, any_content_type: bool = False) -> dict[str, Any]:
    """The request's JSON object; a non-JSON content type is 415 (unless any is accepted: the
    documents' clients send none), broken JSON 400."""
    if not any_content_type and not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send a JSON body with Content-Type: application/json")
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # json's parser recurses once per nesting level: [[[[...]]]] would be a 500
        body = None
    if body is None:
        raise ApiError(400, "invalid_json", "the body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def wants_json(request: Request) -> bool:
    """`?format=json` or an Accept header that prefers JSON over PNG."""
    if request.args.get("format") == "json":
        return True
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["image/png"]
