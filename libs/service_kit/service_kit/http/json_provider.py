"""Flask's JSON through orjson: answers built straight to bytes, without the standard library's
pure-Python encoder steps; UTF-8 kept readable (no \\u escapes) and keys in their order, as before."""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:
            # What orjson refuses and JSON allows: an escaped lone surrogate ("\ud800"), which the
            # services refuse with a message of their own, and NaN. Broken JSON fails here too.
            return json.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        return self._app.response_class(orjson.dumps(self._prepare_response_obj(args, kwargs)),
                                        mimetype="application/json")
