"""What a caller sees through nginx's published port, checked the same way in local mode
(tests/local_stack) and under docker compose (tests/compose): every route, the legacy `/predict`
forms existing clients call, and nginx's own refusals as JSON."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import requests

from tests.conftest import copy_repository

SENTENCE = "我很喜欢中国银行的产品"  # the documents' `ab` URL carries this text


def post_line(url: str, line: str) -> requests.Response:
    return requests.post(f"{url}/lstm", json={"line": line}, timeout=10)


def image_bytes() -> bytes:
    from skimage import data

    return cv2.imencode(".jpg", cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))[1].tobytes()


def check_text_routes(url: str) -> None:
    reply = post_line(url, "这个产品质量很好，我非常喜欢")
    assert reply.status_code == 200 and reply.json()["label"] == "POS"
    lines = requests.post(f"{url}/lstm", json={"lines": ["很好", "太差了，垃圾"]}, timeout=10).json()
    assert [r["label"] for r in lines["results"]] == ["POS", "NEG"]
    encoded = base64.urlsafe_b64encode(SENTENCE.encode()).decode()
    assert encoded == "5oiR5b6I5Zac5qyi5Lit5Zu96ZO26KGM55qE5Lqn5ZOB"
    assert requests.get(f"{url}/lstm?line={encoded}", timeout=10).json()["label"] in ("POS", "NEG")
    # The documents' clients, verbatim in shape: GET with base64, POST json.dumps without Content-Type.
    legacy_get = requests.get(f"{url}/lstm/predict?line={encoded}", timeout=10).json()
    legacy_post = requests.post(f"{url}/lstm/predict", data=json.dumps({"line": SENTENCE}), timeout=10).json()
    assert legacy_get["status"] == 0 and legacy_get == legacy_post


def check_image_routes(url: str) -> None:
    image = image_bytes()
    height, width = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    raw = requests.post(f"{url}/cv_sod", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(raw.content, np.uint8), 0).shape == (height, width)
    # The documents' client: files={'img': open(path, 'rb')}, data="".
    documents = requests.post(f"{url}/cv_sod/predict", data="", files={"img": io.BytesIO(image)}, timeout=30)
    assert documents.status_code == 200 and documents.json()["status"] == 0
    assert base64.b64decode(documents.json()["mask_png"]) == raw.content
    small = cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()
    legacy_get = requests.get(f"{url}/cv_sod/predict?img={base64.urlsafe_b64encode(small).decode()}",
                                 timeout=30)
    assert legacy_get.status_code == 200 and legacy_get.json()["width"] == 8
    as_json = requests.post(f"{url}/cv_sod?format=json", json={"img": base64.b64encode(image).decode()},
                            timeout=30)
    assert as_json.status_code == 200 and as_json.json()["height"] == height


def check_every_route_answers(url: str, times: int = 50) -> None:
    """Each route, `times` times in turn, all 200: what "ready" promises (issue 33: right after
    `./stack up` said ready, 3 of 5 POSTs to /lstm were 503s from an instance still reconnecting)."""
    text = base64.urlsafe_b64encode(SENTENCE.encode()).decode()
    small = base64.urlsafe_b64encode(cv2.imencode(".png", np.full((8, 8, 3), 200, np.uint8))[1].tobytes()).decode()
    image = image_bytes()
    sends = {
        "POST /lstm": lambda session: session.post(f"{url}/lstm", json={"line": SENTENCE}, timeout=10),
        "GET /lstm": lambda session: session.get(f"{url}/lstm?line={text}", timeout=10),
        "POST /lstm/predict": lambda session: session.post(f"{url}/lstm/predict", json={"line": SENTENCE}, timeout=10),
        "GET /lstm/predict": lambda session: session.get(f"{url}/lstm/predict?line={text}", timeout=10),
        "POST /cv_sod": lambda session: session.post(f"{url}/cv_sod", data=image, timeout=30,
                                                     headers={"Content-Type": "image/jpeg"}),
        "GET /cv_sod": lambda session: session.get(f"{url}/cv_sod?img={small}", timeout=30),
        "POST /cv_sod/predict": lambda session: session.post(f"{url}/cv_sod/predict", files={"img": image},
                                                             timeout=30),
        "GET /cv_sod/predict": lambda session: session.get(f"{url}/cv_sod/predict?img={small}", timeout=30),
    }
    failed = {}
    with requests.Session() as session:
        for _ in range(times):
            for route, send in sends.items():
                reply = send(session)
                if reply.status_code != 200:
                    failed.setdefault(route, []).append(f"{reply.status_code} {reply.text[:200]}")
    assert not failed, failed


def check_nginx_refusals_are_json(url: str) -> None:
    index = requests.get(f"{url}/", timeout=5)
    assert index.status_code == 200 and "POST /lstm" in index.json()["routes"]
    missing = requests.get(f"{url}/v1/models/lstm", timeout=5)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    too_big_text = requests.post(f"{url}/lstm", data=b"x" * (2 << 20),
                                 headers={"Content-Type": "application/json"}, timeout=10)
    assert too_big_text.status_code == 413 and too_big_text.json()["error"]["code"] == "payload_too_large"
    too_big_image = requests.post(f"{url}/cv_sod", data=b"\xff" * (22 << 20),
                                  headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert too_big_image.status_code == 413 and too_big_image.headers["Content-Type"] == "application/json"
    assert "Server" not in missing.headers or missing.headers["Server"] == "nginx", "no version disclosed"
    for headers in ({}, {"X-Big": "a" * 70_000}):
        too_long = requests.get(f"{url}/cv_sod?img={'A' * (100_000 if not headers else 4)}", headers=headers,
                                timeout=10)
        assert too_long.status_code in (400, 414) and too_long.json()["error"]["code"], too_long.text[:200]
    for name, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                        ("Referrer-Policy", "no-referrer")):
        assert missing.headers[name] == value and too_big_text.headers[name] == value


def check_access_log_is_private(url: str, read_log: Callable[[], str]) -> None:
    """Callers' texts and images travel in query strings; nginx's access log keeps the path and
    the sizes only, and at most 256 characters of a path."""
    secret = base64.urlsafe_b64encode("我的银行卡密码是多少".encode()).decode()
    reply = requests.get(f"{url}/lstm?line={secret}", headers={"X-Request-ID": "e2e-privacy"}, timeout=10)
    assert reply.status_code == 200
    long_path = requests.get(f"{url}/{'p' * 5000}", headers={"X-Request-ID": "e2e-long"}, timeout=10)
    assert long_path.status_code == 404
    deadline = time.monotonic() + 10
    while "e2e-long" not in read_log() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = read_log()
    lines = {entry["request_id"]: entry for entry in map(json.loads, re.findall(r'\{"ts":.*\}', log))}
    assert secret not in log
    assert lines["e2e-privacy"]["path"] == "/lstm" and lines["e2e-privacy"]["bytes_in"] > len(secret)
    assert len(lines["e2e-long"]["path"]) == 256, "long paths are cut"


def corrupt_cv_sod(repository: Path) -> Path:
    """A model repository whose only cv_sod version cannot load; lstm is intact."""
    copy_repository(repository)
    (repository / "cv_sod" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    return repository


def check_one_broken_model_leaves_the_other_serving(url: str) -> None:
    assert post_line(url, "这个产品质量很好").status_code == 200
    reply = requests.post(f"{url}/cv_sod", data=image_bytes(), headers={"Content-Type": "image/jpeg"},
                          timeout=30)
    assert reply.status_code == 503, reply.text[:300]
    assert reply.json()["error"]["code"] == "model_not_loaded" and reply.headers["Retry-After"]
