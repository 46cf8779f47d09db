"""The client package and its CLI: against the running local stack, and its retries against a
stand-in server that answers 503 first."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from model_api_client import ApiError, ModelApiClient
from tests.conftest import REPO_ROOT

PHOTO = REPO_ROOT / "bench" / "images" / "coffee_600x400.jpg"


def cli(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_api_client", "--url", url, *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_label_and_scores(stack):
    result = cli("lstm", "我很喜欢这个产品", url=stack.url)
    assert result.returncode == 0, result.stderr
    label, score, *_ = result.stdout.split()
    assert label in ("POS", "NEG") and 0.5 <= float(score) <= 1.0
    assert "NEG" in result.stdout and "POS" in result.stdout and "model v1" in result.stdout


def test_cli_several_texts_as_json_lines(stack):
    result = cli("lstm", "很好", "太差了", "--json", url=stack.url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [x["text"] for x in lines] == ["很好", "太差了"]
    assert all(abs(sum(x["probabilities"]) - 1) < 1e-3 for x in lines)


def test_cli_writes_the_mask(stack, tmp_path):
    output = tmp_path / "mask.png"
    result = cli("cv_sod", str(PHOTO), "-o", str(output), url=stack.url)
    assert result.returncode == 0, result.stderr
    mask = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (400, 600) and mask.dtype == np.uint8


def test_cli_bench_reports_rate_and_latency(stack):
    result = cli("bench", "-c", "4", "-d", "2", url=stack.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers/s" in result.stdout and "p99" in result.stdout and " 0 errors" in result.stdout


def test_cli_errors_are_one_line_and_an_exit_code(stack):
    refused = cli("lstm", "   ", url=stack.url)
    assert refused.returncode == 2 and "422 empty_text" in refused.stderr
    unreachable = cli("lstm", "好", url="http://127.0.0.1:9")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_client_typed_results(stack):
    with ModelApiClient(stack.url) as client:
        one = client.sentiment("这个产品质量很好，我很喜欢")
        many = client.sentiments(["很好", "太差了"])
        mask = client.saliency(PHOTO)
        with pytest.raises(ApiError) as caught:
            client.saliency(b"not an image")
    assert one.label == "POS" and one.score == max(one.probabilities) and one.model_version == 1
    assert [m.label for m in many] == ["POS", "NEG"]
    assert (mask.width, mask.height) == (600, 400) and mask.png.startswith(b"\x89PNG")
    assert caught.value.status == 415 and caught.value.code == "not_an_image" and caught.value.request_id


def test_client_exposes_server_timing_and_sends_its_deadline(stack):
    with ModelApiClient(stack.url) as client:
        client.saliency(PHOTO)
        assert {"preprocess", "queue", "model", "postprocess", "total"} <= set(client.last_timing)
        assert client.last_timing["model"] > 0
    with ModelApiClient(stack.url, deadline_ms=0.01, retries=0) as hurried:
        with pytest.raises(ApiError) as caught:
            hurried.sentiment("很好")
    assert caught.value.status == 503 and caught.value.code == "deadline_unreachable"
    result = cli("--timing", "lstm", "很好", url=stack.url)
    assert result.returncode == 0 and "server timing: preprocess" in result.stderr and "model" in result.stderr


class FlakyHandler(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After for the first two requests, then an answer."""

    calls = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).calls <= 2:
            body, status, headers = b'{"error":{"code":"unavailable","message":"later"}}', 503, {"Retry-After": "0"}
        else:
            body, status, headers = b'{"label":"POS","class_id":1,"probabilities":[0.1,0.9],"model_version":3}', 200, {}
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_client_retries_503_after_retry_after_then_gives_up():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        FlakyHandler.calls = 0
        assert ModelApiClient(url, retries=3).sentiment("好").model_version == 3
        assert FlakyHandler.calls == 3, "two 503s retried, POST included"
        FlakyHandler.calls = 0
        with pytest.raises(ApiError) as caught:
            ModelApiClient(url, retries=1).sentiment("好")
        assert caught.value.status == 503 and caught.value.code == "unavailable"
    finally:
        server.shutdown()
