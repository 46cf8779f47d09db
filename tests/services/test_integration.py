"""The real services: gunicorn (gevent workers) with the shared config in each service's folder, talking
gRPC to the real model server over loopback; every route and error over real sockets."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re
import socket
import threading
import time

import cv2
import numpy as np
import psutil
import pytest
import requests

from tests.conftest import free_port, wait_until
from tests.services.conftest import start_api
from tests.services.vision_api.conftest import encode, png_claiming


def workers(instance) -> list[psutil.Process]:
    return psutil.Process(instance.process.process.pid).children()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    from skimage import data

    return encode(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), ".jpg")


def test_text_routes_answer_with_the_model(text_api):
    url = text_api.url
    positive, negative = "这个产品质量很好，我非常喜欢", "太差了，用了两天就坏了，退货"
    one = requests.post(f"{url}/lstm", json={"line": positive}, timeout=10)
    assert one.status_code == 200, one.text
    assert one.json()["label"] == "POS" and one.json()["model_version"] == 1
    assert sum(one.json()["probabilities"]) == pytest.approx(1, abs=1e-4)
    many = requests.post(f"{url}/lstm", json={"lines": [positive, negative]}, timeout=10).json()
    assert [r["label"] for r in many["results"]] == ["POS", "NEG"]
    assert many["results"][0]["probabilities"] == pytest.approx(one.json()["probabilities"], abs=1e-5)
    got = requests.get(f"{url}/lstm", params={"line": b64(negative.encode())}, timeout=10).json()
    assert got["label"] == "NEG"
    legacy_get = requests.get(f"{url}/lstm/predict?line={b64(positive.encode())}", timeout=10).json()
    legacy_post = requests.post(f"{url}/lstm/predict", data=json.dumps({"line": negative}), timeout=10).json()
    assert legacy_get["status"] == 0 and legacy_get["labels"] == "POS" and legacy_get["classes_id"] == 1
    assert legacy_post["labels"] == "NEG" and len(legacy_post["softmax"]) == 2


def test_text_errors_over_sockets_leave_workers_alive(text_api):
    before = {p.pid for p in workers(text_api)}
    url = text_api.url
    cases = [
        (requests.post(f"{url}/lstm", data="{", headers={"Content-Type": "application/json"}), 400),
        (requests.post(f"{url}/lstm", data=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400),
        (requests.get(f"{url}/lstm?line=!!!"), 400),
        (requests.get(f"{url}/no/such/route"), 404),
        (requests.put(f"{url}/lstm", json={"line": "好"}), 405),
        (requests.post(f"{url}/lstm", json={"line": "好" * 5000}), 413),
        (requests.post(f"{url}/lstm", data="x" * 600_000, headers={"Content-Type": "application/json"}), 413),
        (requests.post(f"{url}/lstm", data="line=x", headers={"Content-Type": "text/plain"}), 415),
        (requests.post(f"{url}/lstm", json={"line": " \u3000\t"}), 422),
    ]
    for reply, status in cases:
        assert reply.status_code == status, (reply.request.method, reply.request.url, reply.text)
        assert reply.headers["Content-Type"] == "application/json"
        assert set(reply.json()["error"]) == {"code", "message", "request_id"}
        assert "Traceback" not in reply.text
    assert requests.post(f"{url}/lstm", json={"line": "还行"}, timeout=10).status_code == 200
    assert {p.pid for p in workers(text_api)} == before, "no worker died or restarted"


def test_vision_routes_return_masks_at_the_original_size(vision_api, photo_jpeg):
    url = vision_api.url
    height, width = 400, 600  # skimage's coffee photo
    forms = [
        requests.post(f"{url}/cv_sod", data=photo_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30),
        requests.post(f"{url}/cv_sod", files={"img": ("coffee.jpg", io.BytesIO(photo_jpeg))}, timeout=30),
        requests.post(f"{url}/cv_sod", json={"img": base64.b64encode(photo_jpeg).decode()}, timeout=30),
        requests.get(f"{url}/cv_sod", params={"img": b64(encode(np.zeros((60, 90, 3), np.uint8)))}, timeout=30),
    ]
    for reply in forms:
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"] == "image/png"
        mask = cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.ndim == 2
    assert cv2.imdecode(np.frombuffer(forms[0].content, np.uint8), 0).shape == (height, width)
    assert cv2.imdecode(np.frombuffer(forms[3].content, np.uint8), 0).shape == (60, 90)
    as_json = requests.post(f"{url}/cv_sod/predict", files={"img": ("c.jpg", io.BytesIO(photo_jpeg))}, timeout=30)
    assert as_json.json()["status"] == 0 and (as_json.json()["width"], as_json.json()["height"]) == (width, height)
    assert base64.b64decode(as_json.json()["mask_png"]) == forms[0].content, "same image, same mask"


def test_vision_errors_over_sockets(vision_api):
    url = vision_api.url
    before = {p.pid for p in workers(vision_api)}
    cases = [
        (requests.post(f"{url}/cv_sod", data=b"GIF89a\x0a\x00\x0a\x00garbage",
                       headers={"Content-Type": "image/gif"}), 400),
        (requests.post(f"{url}/cv_sod", data=b"<svg/>", headers={"Content-Type": "image/svg+xml"}), 415),
        (requests.post(f"{url}/cv_sod", data=b"hello", headers={"Content-Type": "text/plain"}), 415),
        (requests.post(f"{url}/cv_sod", data=png_claiming(100_000, 100_000),
                       headers={"Content-Type": "image/png"}), 413),
        (requests.post(f"{url}/cv_sod", data=b"", headers={"Content-Type": "image/png"}), 422),
        (requests.delete(f"{url}/cv_sod"), 405),
    ]
    for reply, status in cases:
        assert reply.status_code == status, (reply.request.url, reply.text)
        assert reply.json()["error"]["code"]
    assert {p.pid for p in workers(vision_api)} == before


def test_health_readiness_metrics_and_request_ids(text_api):
    url = text_api.url
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["available_versions"] == [1]
    for _ in range(20):  # spread over both workers
        requests.post(f"{url}/lstm", json={"line": "好"}, headers={"X-Request-ID": "it-test-42"}, timeout=10)
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines()
                if x.startswith('http_requests_total{method="POST",route="/lstm",status="200"}'))
    assert float(line.split()[-1]) >= 20, "counts from every worker are summed"
    assert 'model_server_request_duration_seconds_count{method="Predict",model="lstm"}' in metrics
    requests.post(f"{url}/lstm", json={"wrong": "好"}, headers={"X-Request-ID": "it-test-43"}, timeout=10)
    log_lines = [json.loads(x) for x in text_api.process.log_text().splitlines() if x.startswith("{")]
    assert any(x.get("request_id") == "it-test-43" and x.get("status") == 400 for x in log_lines)
    assert not any(x.get("request_id") == "it-test-42" for x in log_lines), "successes are nginx's to log"


def server_timing(reply: requests.Response) -> dict[str, float]:
    return {name: float(duration) for name, duration in
            re.findall(r"(\w+);dur=([\d.]+)", reply.headers.get("Server-Timing", ""))}


def test_each_answer_says_where_its_time_went_and_each_batch_why_it_left(text_api, vision_api, photo_jpeg):
    text = requests.post(f"{text_api.url}/lstm", json={"line": "很好"}, timeout=10)
    image = requests.post(f"{vision_api.url}/cv_sod", data=photo_jpeg, headers={"Content-Type": "image/jpeg"},
                          timeout=10)
    for reply in (text, image):
        stages = server_timing(reply)
        assert reply.status_code == 200 and set(stages) == {"preprocess", "queue", "model", "postprocess", "total"}
        assert stages["model"] > 0 and stages["total"] >= sum(v for k, v in stages.items() if k != "total") - 0.1
    refused = requests.post(f"{text_api.url}/lstm", json={"line": "很好"}, headers={"X-Request-Timeout-Ms": "1"},
                            timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "deadline_unreachable"
    assert "model" not in server_timing(refused), "refused before any model work"
    for bad in ("soon", "-5", "nan", "5e-324"):
        reply = requests.post(f"{text_api.url}/lstm", json={"line": "很好"}, headers={"X-Request-Timeout-Ms": bad},
                              timeout=10)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_timeout"
    metrics = requests.get(f"{text_api.url}/metrics", timeout=5).text
    assert re.search(r'model_batch_releases_total\{model="lstm",reason="(idle|window|deadline|full)"\} [1-9]', metrics)
    assert re.search(r'model_requests_shed_total\{model="lstm",reason="predicted_late"\} [1-9]', metrics)
    assert 'model_queue_wait_seconds_count{model="lstm"}' in metrics
    assert 'model_batch_fill_ratio_count{model="lstm"}' in metrics


def test_api_workers_do_not_load_tensorflow(text_api, vision_api):
    for instance in (text_api, vision_api):
        for worker in workers(instance):
            maps = open(f"/proc/{worker.pid}/maps").read()
            assert "tensorflow" not in maps, "an API worker mapped a TensorFlow library"


def test_model_server_down_gives_a_fast_503_with_retry_after(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    instance = start_api("text-api", dead, tmp_path / "log", 1, env={"MODEL_TIMEOUT_SECONDS": "3"})
    try:
        started = time.monotonic()
        reply = requests.post(f"{instance.url}/lstm", json={"line": "好"}, timeout=10)
        assert reply.status_code == 503 and reply.headers["Retry-After"]
        assert reply.json()["error"]["code"] == "model_unavailable"
        assert time.monotonic() - started < 3, "no request waits past its deadline"
        assert requests.get(f"{instance.url}/readyz", timeout=5).status_code == 503
    finally:
        instance.process.stop()


@pytest.mark.parametrize(("batching", "status", "code"), [
    ("coalesce", 504, "model_timeout"),  # asked, and too slow
    ("deadline", 503, "deadline_unreachable"),  # not asked: the batcher knew it could not make it
])
def test_a_deadline_too_short_for_the_model(model_server, tmp_path, photo_jpeg, batching, status, code):
    instance = start_api("vision-api", model_server.grpc_address, tmp_path / "log", 1,
                         env={"MODEL_TIMEOUT_SECONDS": "0.002", "MODEL_BATCHING": batching})
    try:
        reply = requests.post(f"{instance.url}/cv_sod", data=photo_jpeg,
                              headers={"Content-Type": "image/jpeg"}, timeout=10)
        assert reply.status_code == status and reply.json()["error"]["code"] == code
        assert ("Retry-After" in reply.headers) == (status == 503)
    finally:
        instance.process.stop()


# --- issue 20, items 7 and 8 (API side): over real sockets, against a stand-in model server ------

class GatedModelServer:
    """A stand-in model server over real gRPC that answers Predict as fake_sentiment does, holding
    its first call until `gate` is set; it notes every word it is sent."""

    def __init__(self):
        from concurrent import futures

        import grpc

        from tfserving_client.protos.tensorflow_serving.apis import predict_pb2

        self.gate = threading.Event()
        self.words: list[str] = []
        self.address = f"127.0.0.1:{free_port()}"
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(
                self.predict, request_deserializer=predict_pb2.PredictRequest.FromString,
                response_serializer=predict_pb2.PredictResponse.SerializeToString)})])
        self.server.add_insecure_port(self.address)
        self.server.start()

    def predict(self, request, context):
        from tests.services.conftest import fake_sentiment
        from tfserving_client import from_tensor_proto, to_tensor_proto
        from tfserving_client.protos.tensorflow_serving.apis import predict_pb2

        inputs = {name: from_tensor_proto(tensor) for name, tensor in request.inputs.items()}
        first_call = not self.words
        self.words += [word.decode() for word in inputs["words"].ravel() if word != b"<pad>"]
        if first_call:
            self.gate.wait(20)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 1
        for name, value in fake_sentiment(inputs).items():
            response.outputs[name].CopyFrom(to_tensor_proto(value))
        return response


@pytest.fixture
def gated_text_api(tmp_path):
    model = GatedModelServer()
    instance = start_api("text-api", model.address, tmp_path / "log", 1)
    try:
        yield instance, model
    finally:
        model.gate.set()
        instance.process.stop()
        model.server.stop(0)


def lstm_request(line: str) -> bytes:
    body = json.dumps({"line": line}).encode()
    return (b"POST /lstm HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def shed_count(url: str, reason: str) -> float:
    found = re.search(rf'model_requests_shed_total{{model="lstm",reason="{reason}"}} ([\d.]+)',
                      requests.get(f"{url}/metrics", timeout=5).text)
    return float(found.group(1)) if found else 0.0


def test_a_request_whose_client_left_while_queued_never_reaches_the_model(gated_text_api):
    """nginx closes its connection to the API when its own client goes away: a request queued
    behind a slow model call whose connection closed is dropped as its batch leaves."""
    instance, model = gated_text_api
    first = concurrent.futures.ThreadPoolExecutor(2)
    slow = first.submit(requests.post, f"{instance.url}/lstm", json={"line": "好"}, timeout=30)
    wait_until(lambda: model.words == ["好"], 10, "the first model call")
    host, port = instance.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as leaving:
        leaving.sendall(lstm_request("坏"))
        time.sleep(0.5)  # read, segmented and queued behind the held call
    waiting = first.submit(requests.post, f"{instance.url}/lstm", json={"line": "行"}, timeout=30)
    time.sleep(0.3)
    model.gate.set()
    assert slow.result().status_code == 200 and waiting.result().status_code == 200
    assert "坏" not in model.words and "行" in model.words, model.words
    assert shed_count(instance.url, "client_gone") == 1


def test_sheds_over_sockets_are_counted_not_logged_and_made_up_methods_are_other(gated_text_api):
    instance, model = gated_text_api
    model.gate.set()
    before = shed_count(instance.url, "predicted_late")
    for number in range(20):
        reply = requests.post(f"{instance.url}/lstm", json={"line": "好"}, timeout=10,
                              headers={"X-Request-Timeout-Ms": "1", "X-Request-ID": f"shed-{number}"})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "deadline_unreachable"
    requests.post(f"{instance.url}/lstm", json={"wrong": "好"}, headers={"X-Request-ID": "logged-400"}, timeout=10)
    assert requests.request("FROBNICATE", f"{instance.url}/lstm", timeout=10).status_code == 405
    assert shed_count(instance.url, "predicted_late") == before + 20
    wait_until(lambda: "logged-400" in instance.process.log_text(), 5, "the 400's access line")
    assert "shed-" not in instance.process.log_text(), "no line for a shed request"
    scraped = requests.get(f"{instance.url}/metrics", timeout=5).text
    assert 'method="other",route="<unmatched>",status="405"' in scraped and "FROBNICATE" not in scraped
