"""The service shape: a subclass supplies to_inputs/from_outputs, its ModelCall the Predict call,
batching and the metric; model code's refusals become HTTP statuses in one place."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from flask import Flask

from service_kit.core import deadlines
from service_kit.core.refusals import (
    Busy,
    DeadlineExceeded,
    InputTooLarge,
    InvalidInput,
    UnsupportedInput,
    UnusableInput,
)
from service_kit.core.service import ModelService
from service_kit.core.settings import ServiceSettings
from service_kit.http.app import create_service_app
from service_kit.http.errors import register_error_handlers
from tests.services.conftest import FakeModelClient


class Doubler(ModelService[float, float, float]):
    output_names = ("y",)

    def to_inputs(self, examples: list[float]) -> dict[str, np.ndarray]:
        return {"x": np.array(examples, np.float32)}

    def from_outputs(self, outputs: dict[str, np.ndarray], count: int) -> list[float]:
        return [float(v) for v in outputs["y"]]


@pytest.mark.parametrize("batching", [True, False])
def test_the_base_makes_the_predict_call_with_the_services_settings(batching):
    client = FakeModelClient(lambda inputs: {"y": inputs["x"] * 2})
    settings = ServiceSettings(model_name="doubler", model_signature="sig", model_version_label="stable",
                               model_batching=batching)
    prediction = Doubler(client, settings).predict([1.0, 2.5], deadlines.outside_a_request(settings))
    assert prediction.results == [2.0, 5.0] and prediction.model_version == 1
    [call] = client.calls
    assert call["model"] == "doubler" and call["signature_name"] == "sig" and call["version_label"] == "stable"
    assert call["output_filter"] == ["y"]


@pytest.mark.parametrize(("error", "status"), [
    (InvalidInput("corrupt", "m"), 400), (InputTooLarge("too_long", "m"), 413),
    (UnsupportedInput("not_an_image", "m"), 415), (UnusableInput("empty", "m"), 422), (Busy("m"), 503),
])
def test_model_code_errors_become_statuses_in_one_place(error, status):
    app = Flask(__name__)
    register_error_handlers(app, retry_after_seconds=2)

    @app.get("/")
    def fail():
        raise error

    reply = app.test_client().get("/")
    assert reply.status_code == status and reply.json["error"]["message"] == "m"
    assert (reply.headers.get("Retry-After") == "2") == (status == 503)


def test_healthz_answers_503_once_the_workers_batcher_stopped(monkeypatch):
    """A worker whose batcher loop ended answers no model request again, yet its process lives:
    the liveness probe must fail, so that the orchestrator replaces it."""
    client = FakeModelClient(lambda inputs: {"y": inputs["x"] * 2})
    settings = ServiceSettings(model_name="doubler", request_timeout_ms=200.0)
    app = create_service_app(__name__, settings, client=client)
    service = app.extensions["service"] = Doubler(client, settings)
    probe = app.test_client()
    assert probe.get("/healthz").status_code == 200
    assert service.predict([1.0], deadlines.outside_a_request(settings)).results == [2.0]
    assert probe.get("/healthz").status_code == 200

    def broken(now):
        raise RuntimeError("a bug in the rules")

    monkeypatch.setattr(service.model_call.batcher.rules, "decide", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the loop logs its own end
    with pytest.raises(DeadlineExceeded):  # 200 ms: the loop stopped as the request was queued
        service.predict([2.0], deadlines.outside_a_request(settings))
    answer = probe.get("/healthz")
    assert answer.status_code == 503 and answer.json == {"status": "batcher_stopped"}
