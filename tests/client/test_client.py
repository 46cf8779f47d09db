"""The client package and its CLI: against the running local stack, and its retries and deadline
against a local stand-in server that answers what each test scripts (503 with Retry-After, 504, a
hang)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest
import requests

from model_api_client import ApiError, ModelApiClient
from tests.conftest import REPO_ROOT, free_port

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


ANSWER = b'{"label":"POS","class_id":1,"probabilities":[0.1,0.9],"model_version":3}'


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers the n-th POST with `script[n]` (status, extra headers, seconds to wait first), the
    last entry again once the script runs out; notes when each request came and its headers."""

    script: list[tuple[int, dict[str, str], float]] = []
    seen: list[tuple[float, dict[str, str]]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        cls = type(self)
        cls.seen.append((time.monotonic(), dict(self.headers)))
        self.rfile.read(int(self.headers["Content-Length"]))
        status, headers, delay = cls.script[min(len(cls.seen), len(cls.script)) - 1]
        time.sleep(delay)
        body = ANSWER if status == 200 else b'{"error":{"code":"refused","message":"later"}}'
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[..., str]]:
    """A local HTTP server; call it with the script (see ScriptedHandler) to get its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def start(*script: tuple[int, dict[str, str], float]) -> str:
        ScriptedHandler.script, ScriptedHandler.seen = list(script), []
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    server.shutdown()


def timed(call: Callable[[], object], limit: float = 5.0) -> tuple[object, float]:
    """`call`'s result (or the exception it raised) and its seconds; a call past `limit` fails the
    test without holding it up (the older client slept as long as Retry-After said, up to 6 h)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"still running after {limit} s"
    return outcome[0], time.monotonic() - started


def test_client_retries_503_after_retry_after_then_gives_up(scripted):
    url = scripted((503, {"Retry-After": "0"}, 0), (503, {"Retry-After": "0"}, 0), (200, {}, 0))
    assert ModelApiClient(url, retries=3).sentiment("好").model_version == 3
    assert len(ScriptedHandler.seen) == 3, "two 503s retried"
    url = scripted((503, {"Retry-After": "0"}, 0))
    with pytest.raises(ApiError) as caught:
        ModelApiClient(url, retries=1).sentiment("好")
    assert caught.value.status == 503 and caught.value.code == "refused" and len(ScriptedHandler.seen) == 2


@pytest.mark.parametrize("status", [502, 504])
def test_an_answer_that_may_have_come_after_model_work_is_never_retried(scripted, status):
    url = scripted((status, {"Retry-After": "0"}, 0), (200, {}, 0))
    outcome, seconds = timed(lambda: ModelApiClient(url, retries=3).sentiment("好"))
    assert isinstance(outcome, ApiError) and outcome.status == status
    assert len(ScriptedHandler.seen) == 1


def test_retry_after_is_obeyed_up_to_a_few_seconds_and_never_past_the_deadline(scripted):
    url = scripted((503, {"Retry-After": "3600"}, 0), (200, {}, 0))
    outcome, seconds = timed(lambda: ModelApiClient(url, retries=3, deadline_ms=500).sentiment("好"))
    assert isinstance(outcome, ApiError) and outcome.status == 503, "no time to wait an hour: the 503 at once"
    assert len(ScriptedHandler.seen) == 1 and seconds < 0.5
    url = scripted((503, {"Retry-After": "3600"}, 0), (503, {"Retry-After": "3600"}, 0), (200, {}, 0))
    outcome, seconds = timed(lambda: ModelApiClient(url, retries=3, max_retry_after=0.2).sentiment("好"))
    assert outcome.model_version == 3 and len(ScriptedHandler.seen) == 3 and 0.4 <= seconds < 1.5


def test_the_deadline_spans_every_attempt_and_each_says_what_is_left(scripted):
    url = scripted((503, {"Retry-After": "0"}, 0.2))  # each attempt answered in 0.2 s
    outcome, seconds = timed(lambda: ModelApiClient(url, retries=100, deadline_ms=700).sentiment("好"))
    assert isinstance(outcome, ApiError) and outcome.status == 503
    assert 0.6 <= seconds < 1.0 and len(ScriptedHandler.seen) == 4  # the last started with 0.1 s left
    first = ScriptedHandler.seen[0][0]
    for at, headers in ScriptedHandler.seen:
        left = float(headers["X-Request-Timeout-Ms"])
        assert 0 < left <= 700 - 1000 * (at - first) + 5, (left, at - first)


def test_a_call_that_hangs_is_given_up_at_its_deadline(scripted):
    url = scripted((200, {}, 3.0))
    outcome, seconds = timed(lambda: ModelApiClient(url, deadline_ms=300).sentiment("好"))
    assert isinstance(outcome, requests.Timeout) and seconds < 1.0 and len(ScriptedHandler.seen) == 1


def test_a_connection_that_cannot_be_made_is_retried_within_the_deadline():
    closed = f"http://127.0.0.1:{free_port()}"
    outcome, seconds = timed(lambda: ModelApiClient(closed, retries=50, deadline_ms=400).sentiment("好"))
    assert isinstance(outcome, requests.ConnectionError) and 0.2 <= seconds < 0.6
    outcome, seconds = timed(lambda: ModelApiClient(closed, retries=2).sentiment("好"))
    assert isinstance(outcome, requests.ConnectionError) and 0.2 <= seconds < 1.0  # 0.1 + 0.2 s apart
