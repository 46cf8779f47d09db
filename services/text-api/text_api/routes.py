"""HTTP routes of text-api: parse the request, ask SentimentModel, shape the answer."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from service_kit.http.errors import ApiError
from service_kit.http.inputs import decode_base64, json_body
from text_api.sentiment import Sentiment, SentimentModel

blueprint = Blueprint("text_api", __name__)


def _model() -> SentimentModel:
    return current_app.extensions["sentiment_model"]


def _as_dict(result: Sentiment) -> dict:
    return {"label": result.label, "class_id": result.class_id, "probabilities": result.probabilities}


def _text_field(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{name!r} must be a string")
    return value


def _line_from_query() -> str:
    encoded = request.args.get("line")
    if encoded is None:
        raise ApiError(400, "missing_field", "give the text as ?line=<URL-safe base64 of its UTF-8 bytes>")
    try:
        return decode_base64(encoded, "line").decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_utf8", "line does not decode to UTF-8 text") from None


@blueprint.post("/lstm")
def classify():
    """`{"line": "..."}` for one text, `{"lines": [...]}` for several in one model call."""
    body = json_body(request)
    if ("line" in body) == ("lines" in body):
        raise ApiError(400, "missing_field", 'give exactly one of "line" (a string) or "lines" (a list of strings)')
    if "line" in body:
        batch = _model().classify([_text_field(body["line"], "line")])
        return jsonify(**_as_dict(batch.results[0]), model_version=batch.model_version)
    lines = body["lines"]
    if not isinstance(lines, list) or not lines:
        raise ApiError(400, "invalid_field", '"lines" must be a non-empty list of strings')
    limit = current_app.extensions["settings"].max_lines
    if len(lines) > limit:
        raise ApiError(413, "too_many_lines", f"{len(lines)} lines; the limit is {limit} per request")
    batch = _model().classify([_text_field(line, f"lines[{i}]") for i, line in enumerate(lines)])
    return jsonify(results=[_as_dict(r) for r in batch.results], model_version=batch.model_version)


@blueprint.get("/lstm")
def classify_query():
    batch = _model().classify([_line_from_query()])
    return jsonify(**_as_dict(batch.results[0]), model_version=batch.model_version)


@blueprint.route("/lstm/predict", methods=["GET", "POST"])
def legacy_predict():
    """The legacy `/predict` form existing clients call (the source documents' API): its route and
    reply shape.

    Their clients POST `json.dumps({"line": ...})` without a Content-Type, so the body is read
    as JSON whatever the header says.
    """
    if request.method == "GET":
        line = _line_from_query()
    else:
        body = json_body(request, any_content_type=True)
        if "line" not in body:
            raise ApiError(400, "missing_field", 'the body needs "line"')
        line = _text_field(body["line"], "line")
    result = _model().classify([line]).results[0]
    return jsonify(status=0, classes_id=result.class_id, labels=result.label, softmax=result.probabilities)
