"""HTTP routes of vision-api: find the image in the request, ask SaliencyModel, shape the answer."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, jsonify, request

from service_kit.http.errors import ApiError
from service_kit.http.inputs import decode_base64, json_body, wants_json
from vision_api.saliency import SaliencyMask, SaliencyModel

blueprint = Blueprint("vision_api", __name__)

_RAW_TYPES = ("image/", "application/octet-stream")


def _model() -> SaliencyModel:
    return current_app.extensions["saliency_model"]


def _mask_of_request() -> SaliencyMask:
    """The mask of the request's image; the memory its body takes is reserved before it is read."""
    model = _model()
    with model.room_for_body(_body_bytes_needed()):
        return model.mask(_image_from_request())


def _body_bytes_needed() -> int:
    """A raw or multipart body is held once; JSON as bytes, as text, cleaned, and decoded (base64)."""
    if request.method == "GET":
        return 4 * len(request.query_string)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = min(request.content_length if request.content_length is not None else limit, limit)
    return 5 * length if request.mimetype == "application/json" else length


def _image_from_request() -> bytes:
    """The image from `?img=` (GET), a multipart field `img`, JSON `{"img": base64}` or the raw body."""
    if request.method == "GET":
        encoded = request.args.get("img")
        if encoded is None:
            raise ApiError(400, "missing_field", "give the image as ?img=<URL-safe base64 of the file>")
        return decode_base64(encoded, "img")
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        upload = request.files.get("img")
        if upload is None:
            raise ApiError(400, "missing_field", 'the multipart form needs a file field "img"')
        return upload.read()
    if content_type == "application/json":
        image = json_body(request).get("img")
        if not isinstance(image, str):
            raise ApiError(400, "missing_field", 'the JSON body needs "img": "<base64 of the image file>"')
        return decode_base64(image, "img")
    if content_type.startswith(_RAW_TYPES):
        return request.get_data()
    raise ApiError(415, "unsupported_media_type",
                   "send the image as the body (Content-Type: image/...), as multipart field img, "
                   'or as JSON {"img": "<base64>"}')


def _json_fields(mask: SaliencyMask) -> dict:
    return {"mask_png": base64.b64encode(mask.png).decode("ascii"), "width": mask.width,
            "height": mask.height, "model_version": mask.model_version}


@blueprint.route("/cv_sod", methods=["GET", "POST"])
def saliency():
    """The mask as a PNG, or as JSON with the PNG in base64 when the caller prefers JSON."""
    mask = _mask_of_request()
    if wants_json(request):
        return jsonify(_json_fields(mask))
    response = Response(mask.png, mimetype="image/png")
    if mask.model_version is not None:
        response.headers["X-Model-Version"] = str(mask.model_version)
    return response


@blueprint.route("/cv_sod/predict", methods=["GET", "POST"])
def legacy_predict():
    """The legacy `/predict` form existing clients call (the source documents' API): JSON with
    `status: 0`. Their reply pickled a numpy array,
    which lets a server run code in its client; here the mask is a PNG in `mask_png`."""
    mask = _mask_of_request()
    return jsonify(status=0, **_json_fields(mask))
