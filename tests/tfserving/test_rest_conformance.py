"""TF Serving's REST API (api_rest.md), driven with plain HTTP."""

from __future__ import annotations

import base64
import re
import socket
import time

import numpy as np
import pytest
import requests

from model_server.rest_api import MAX_BODY_BYTES

ROWS = [{"words": ["很", "喜欢"], "nwords": 2}, {"words": ["很", "垃圾"], "nwords": 2}]


def post(serving, path: str, body) -> requests.Response:
    return requests.post(f"{serving.rest_url}{path}", json=body, timeout=30)


def test_status_lists_versions_and_states(serving):
    reply = requests.get(f"{serving.rest_url}/v1/models/lstm", timeout=10)
    assert reply.status_code == 200
    statuses = reply.json()["model_version_status"]
    assert {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} in statuses


def test_status_of_one_version(serving):
    reply = requests.get(f"{serving.rest_url}/v1/models/cv_sod/versions/1", timeout=10)
    assert reply.status_code == 200
    assert [s["version"] for s in reply.json()["model_version_status"]] == ["1"]


def test_metadata_describes_the_signature(serving):
    reply = requests.get(f"{serving.rest_url}/v1/models/lstm/metadata", timeout=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_spec"]["name"] == "lstm"
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["words"]["dtype"] == "DT_STRING"
    assert signature["inputs"]["nwords"]["dtype"] == "DT_INT32"
    assert set(signature["outputs"]) == {"labels", "classes_id", "softmax"}


def test_row_format_predict(serving):
    reply = post(serving, "/v1/models/lstm:predict", {"instances": ROWS})
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert [p["labels"] for p in predictions] == ["POS", "NEG"]
    assert [p["classes_id"] for p in predictions] == [1, 0]
    assert all(len(p["softmax"]) == 2 for p in predictions)


def test_columnar_format_predict_matches_row_format(serving):
    columnar = post(serving, "/v1/models/lstm:predict",
                    {"inputs": {"words": [r["words"] for r in ROWS], "nwords": [r["nwords"] for r in ROWS]}})
    assert columnar.status_code == 200, columnar.text
    outputs = columnar.json()["outputs"]
    rows = post(serving, "/v1/models/lstm:predict", {"instances": ROWS}).json()["predictions"]
    assert outputs["labels"] == [r["labels"] for r in rows]
    np.testing.assert_allclose(outputs["softmax"], [r["softmax"] for r in rows], rtol=1e-5)


def test_b64_strings_are_decoded(serving):
    encoded = [{"b64": base64.b64encode(w.encode()).decode()} for w in ROWS[0]["words"]]
    plain = post(serving, "/v1/models/lstm:predict", {"instances": ROWS[:1]}).json()
    via_b64 = post(serving, "/v1/models/lstm:predict", {"instances": [{"words": encoded, "nwords": 2}]}).json()
    assert via_b64 == plain


def test_predict_by_version_path(serving):
    reply = post(serving, "/v1/models/lstm/versions/1:predict", {"instances": ROWS})
    assert reply.status_code == 200


def test_single_input_model_takes_bare_instances(serving):
    image = np.zeros((320, 320, 3), dtype=np.float32).tolist()
    reply = post(serving, "/v1/models/cv_sod:predict", {"instances": [image]})
    assert reply.status_code == 200, reply.text[:300]
    mask = np.array(reply.json()["predictions"])
    assert mask.shape == (1, 320, 320, 1)


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/v1/models/no_such_model:predict", {"instances": ROWS}, 404),
        ("/v1/models/lstm/versions/999:predict", {"instances": ROWS}, 404),
        ("/v1/models/lstm:predict", {"instances": [{"words": ["很"], "nwords": "two"}]}, 400),
        ("/v1/models/lstm:predict", {"instances": [{"words": ["很"]}]}, 400),
        ("/v1/models/lstm:predict", {"instances": ROWS, "inputs": {}}, 400),
        ("/v1/models/lstm:predict", {"instances": [{"words": [{"b64": "not base64!"}], "nwords": 1}]}, 400),
        ("/v1/models/lstm:predict", {"signature_name": "nope", "instances": ROWS}, 400),
        ("/v1/models/cv_sod:predict", {"instances": [[[0.0, 1.0]]]}, 400),
    ],
    ids=["unknown-model", "unknown-version", "wrong-type", "missing-input", "both-formats", "bad-b64",
         "unknown-signature", "wrong-shape"],
)
def test_errors_have_tf_serving_shape_and_status(serving, path, body, status):
    reply = post(serving, path, body)
    assert reply.status_code == status, reply.text
    assert isinstance(reply.json()["error"], str) and reply.json()["error"]


def test_malformed_json_is_400(serving):
    reply = requests.post(f"{serving.rest_url}/v1/models/lstm:predict", data=b"{not json", timeout=10)
    assert reply.status_code == 400
    assert "error" in reply.json()


def test_unknown_path_is_404(serving):
    reply = requests.get(f"{serving.rest_url}/v2/whatever", timeout=10)
    assert reply.status_code == 404
    assert "error" in reply.json()


def raw_exchange(rest_url: str, head: str) -> tuple[bytes, bytes]:
    """Send a raw request head; return the answer and what the connection says next (b"" if closed)."""
    host, port = rest_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode("latin-1"))  # as HTTP heads are read: a byte a character
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        length = int(re.search(rb"Content-Length: (\d+)", answer).group(1))
        while len(answer.split(b"\r\n\r\n", 1)[1]) < length:
            answer += sock.recv(65536)
        try:
            after = sock.recv(65536)
        except TimeoutError:
            after = b"<still open>"
    return answer, after


# "\u00b2" ('²', one byte in latin-1): str.isdigit() said yes, int() no, and the answer was a 500 with a
# traceback (issue 33).
@pytest.mark.parametrize("length", ["-1", "abc", str(MAX_BODY_BYTES + 1), "\u00b2", "1\u00b9"])
def test_a_bad_or_oversized_content_length_is_refused_and_the_connection_closed(serving, length):
    """read(-1) would hold a thread until the client hangs up; an unread body would be parsed as the
    next request on the same keep-alive connection."""
    started = time.monotonic()
    answer, after = raw_exchange(serving.rest_url, f"POST /v1/models/lstm:predict HTTP/1.1\r\nHost: x\r\n"
                                                   f"Content-Length: {length}\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"413", b"429"), answer[:200]
    assert b'"error"' in answer
    assert after == b"", "the connection is closed, not left for the unread body"
    assert time.monotonic() - started < 3
