"""End to end through the real nginx of `./stack up`: model server, two instances each of text-api
and vision-api, and nginx as local processes, exactly as a user starts them."""

from __future__ import annotations

import base64
import io
import json
import os
import time

import cv2
import numpy as np
import psutil
import pytest
import requests

from tests.conftest import Stack, api_ready, free_port, running_stack, wait_until

SENTENCE = "我很喜欢中国银行的产品"  # the documents' `ab` URL carries this text


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("stack"), "--scale", "text-api=2") as stack:
        yield stack


def post_line(url: str, line: str) -> requests.Response:
    return requests.post(f"{url}/lstm", json={"line": line}, timeout=10)


def image_bytes() -> bytes:
    from skimage import data

    return cv2.imencode(".jpg", cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))[1].tobytes()


def test_text_routes_through_nginx(stack):
    reply = post_line(stack.url, "这个产品质量很好，我非常喜欢")
    assert reply.status_code == 200 and reply.json()["label"] == "POS"
    lines = requests.post(f"{stack.url}/lstm", json={"lines": ["很好", "太差了，垃圾"]}, timeout=10).json()
    assert [r["label"] for r in lines["results"]] == ["POS", "NEG"]
    encoded = base64.urlsafe_b64encode(SENTENCE.encode()).decode()
    assert encoded == "5oiR5b6I5Zac5qyi5Lit5Zu96ZO26KGM55qE5Lqn5ZOB"
    assert requests.get(f"{stack.url}/lstm?line={encoded}", timeout=10).json()["label"] in ("POS", "NEG")
    # The documents' clients, verbatim in shape: GET with base64, POST json.dumps without Content-Type.
    documents_get = requests.get(f"{stack.url}/lstm/predict?line={encoded}", timeout=10).json()
    documents_post = requests.post(f"{stack.url}/lstm/predict", data=json.dumps({"line": SENTENCE}), timeout=10).json()
    assert documents_get["status"] == 0 and documents_get == documents_post


def test_image_routes_through_nginx(stack):
    image = image_bytes()
    height, width = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    raw = requests.post(f"{stack.url}/cv_sod", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(raw.content, np.uint8), 0).shape == (height, width)
    # The documents' client: files={'img': open(path, 'rb')}, data="".
    documents = requests.post(f"{stack.url}/cv_sod/predict", data="", files={"img": io.BytesIO(image)}, timeout=30)
    assert documents.status_code == 200 and documents.json()["status"] == 0
    assert base64.b64decode(documents.json()["mask_png"]) == raw.content
    small = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
    documents_get = requests.get(f"{stack.url}/cv_sod/predict?img={base64.urlsafe_b64encode(small).decode()}",
                                 timeout=30)
    assert documents_get.status_code == 200 and documents_get.json()["width"] == 8
    as_json = requests.post(f"{stack.url}/cv_sod?format=json", json={"img": base64.b64encode(image).decode()},
                            timeout=30)
    assert as_json.status_code == 200 and as_json.json()["height"] == height


def test_nginx_answers_in_json_for_what_it_refuses(stack):
    index = requests.get(f"{stack.url}/", timeout=5)
    assert index.status_code == 200 and "POST /lstm" in index.json()["routes"]
    missing = requests.get(f"{stack.url}/v1/models/lstm", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    too_big_text = requests.post(f"{stack.url}/lstm", data=b"x" * (2 << 20),
                                 headers={"Content-Type": "application/json"}, timeout=10)
    assert too_big_text.status_code == 413 and too_big_text.json()["error"]["code"] == "payload_too_large"
    too_big_image = requests.post(f"{stack.url}/cv_sod", data=b"\xff" * (22 << 20),
                                  headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert too_big_image.status_code == 413 and too_big_image.headers["Content-Type"] == "application/json"
    assert "Server" not in missing.headers or missing.headers["Server"] == "nginx", "no version disclosed"
    for headers in ({}, {"X-Big": "a" * 70_000}):
        too_long = requests.get(f"{stack.url}/cv_sod?img={'A' * (100_000 if not headers else 4)}", headers=headers,
                                timeout=10)
        assert too_long.status_code in (400, 414) and too_long.json()["error"]["code"], too_long.text[:200]
    for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                        ("Referrer-Policy", "no-referrer")):
        assert missing.headers[name] == value and too_big_text.headers[name] == value


def test_request_ids_pass_through_nginx_to_the_service(stack):
    reply = requests.post(f"{stack.url}/lstm", json={"line": "好"}, headers={"X-Request-ID": "e2e-req-7"}, timeout=10)
    assert reply.headers["X-Request-ID"] == "e2e-req-7"
    made = requests.post(f"{stack.url}/lstm", json={"line": "好"}, timeout=10).headers["X-Request-ID"]
    assert len(made) == 32
    wait_until(lambda: "e2e-req-7" in (stack.run_dir / "nginx" / "access.log").read_text(), 5, "access log")
    # The services log failures (successes are in nginx's log): the same id reaches them.
    failed = requests.post(f"{stack.url}/lstm", json={"nope": 1}, headers={"X-Request-ID": "e2e-req-8"}, timeout=10)
    assert failed.status_code == 400 and failed.json()["error"]["request_id"] == "e2e-req-8"
    logs = lambda: "".join(p.read_text() for p in (stack.run_dir / "logs").glob("text-api-*.log"))
    wait_until(lambda: '"request_id": "e2e-req-8"' in logs(), 5, "the service's log line")


def test_both_text_api_instances_receive_traffic(stack):
    for _ in range(60):
        assert post_line(stack.url, "还不错").status_code == 200
    counts = {}
    for name in ("text-api-1", "text-api-2"):
        metrics = requests.get(f"{stack.state()['services'][name]['address']}/metrics", timeout=5).text
        counts[name] = sum(float(line.split()[-1]) for line in metrics.splitlines()
                           if line.startswith('http_requests_total{method="POST",route="/lstm"'))
    assert all(count >= 10 for count in counts.values()), counts
    upstreams = {json.loads(line)["upstream"] for line in (stack.run_dir / "nginx" / "access.log").read_text()
                 .splitlines() if '"uri":"/lstm"' in line}
    assert len(upstreams) >= 2


def test_a_killed_gunicorn_master_is_restarted(stack):
    before = stack.state()["services"]["text-api-1"]
    os.kill(before["pid"], 9)
    failures = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        failures += post_line(stack.url, "质量不错").status_code != 200
        now = stack.state()["services"]["text-api-1"]
        if now["restarts"] == before["restarts"] + 1 and api_ready(now["address"]):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"text-api-1 was not restarted: {stack.process.log_text()[-2000:]}")
    assert now["pid"] != before["pid"]
    assert failures == 0, "nginx sent the requests to the other instance meanwhile"
    assert all(post_line(stack.url, "很好").status_code == 200 for _ in range(10))


def test_down_stops_everything(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stack-down")
    stack = Stack(run_dir, free_port())
    try:
        stack.wait_ready()
        pids = [service["pid"] for service in stack.state()["services"].values()]
        children = [c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)]
        result = stack.down()
        assert result.returncode == 0, result.stderr
        stack.process.process.wait(10)
        leftovers = [pid for pid in pids + children if psutil.pid_exists(pid)
                     and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, f"still running: {leftovers}"
        assert not (run_dir / "stack.json").exists()
    finally:
        stack.process.stop()
