"""The HTTP ceiling: text-api's whole HTTP path (nginx, gunicorn with the same config, Flask with
service_kit's request ids, metrics and logs, JSON parsing) answering a constant instead of
segmenting and asking the model. Benchmark use only.

    cd services/text-api && gunicorn -c python:service_kit.http.gunicorn_base 'bench.constant_app:create_app()'
"""

from __future__ import annotations

from flask import Flask, jsonify, request

from service_kit.http.app import create_service_app
from service_kit.http.inputs import json_body
from text_api.settings import TextApiSettings

ANSWER = {"label": "POS", "class_id": 1, "probabilities": [0.5, 0.5], "model_version": 1}


def create_app() -> Flask:
    app = create_service_app(__name__, TextApiSettings.from_env())

    @app.post("/lstm")
    def constant():
        json_body(request)  # parse the body as the real route does
        return jsonify(ANSWER)

    return app
