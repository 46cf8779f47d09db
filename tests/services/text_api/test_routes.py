"""text-api's HTTP layer against a stand-in model client: request forms, reply shapes, errors."""

from __future__ import annotations

import base64

import grpc
import pytest

from service_kit.http.app import service_app
from text_api.sentiment import SentimentService
from text_api.settings import TextApiSettings


@pytest.fixture
def client(text_client_fake):
    app = service_app(SentimentService, TextApiSettings(max_text_chars=50, max_lines=3, max_text_words=20),
                      client=text_client_fake)
    return app.test_client()


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_one_line(client, text_client_fake):
    reply = client.post("/lstm", json={"line": "喜欢这个产品"})
    assert reply.status_code == 200
    assert reply.json == {"label": "POS", "class_id": 1, "probabilities": [pytest.approx(0.2), pytest.approx(0.8)],
                          "model_version": 1}
    call = text_client_fake.calls[-1]
    assert call["model"] == "lstm" and call["signature_name"] == "serving_default"
    assert call["version_label"] is None, "the newest version unless a label is configured"
    assert call["inputs"]["nwords"].tolist() == [3]


def test_a_configured_version_label_is_asked_for(text_client_fake):
    app = service_app(SentimentService, TextApiSettings(model_version_label="stable"), client=text_client_fake)
    assert app.test_client().post("/lstm", json={"line": "好"}).status_code == 200
    assert text_client_fake.calls[-1]["version_label"] == "stable"


def test_several_lines_are_one_model_call(client, text_client_fake):
    reply = client.post("/lstm", json={"lines": ["喜欢", "太差了，真的很差", "好"]})
    assert reply.status_code == 200
    assert [r["label"] for r in reply.json["results"]] == ["POS", "NEG", "POS"]
    assert len(text_client_fake.calls) == 1
    words, nwords = text_client_fake.calls[0]["inputs"]["words"], text_client_fake.calls[0]["inputs"]["nwords"]
    assert words.shape == (3, max(nwords)) and words[0, 1] == b"<pad>"


def test_a_long_text_is_not_batched_with_short_ones(text_client_fake):
    """Issue 33: a call is padded to its longest text; a text of 300 words goes in a call of its own
    length class, and the short ones of the same request share theirs."""
    app = service_app(SentimentService, TextApiSettings(), client=text_client_fake)
    reply = app.test_client().post("/lstm", json={"lines": ["喜欢", "，" * 299 + "好", "太差了"]})
    assert reply.status_code == 200 and [r["label"] for r in reply.json["results"]] == ["POS", "NEG", "NEG"]
    assert sorted(call["inputs"]["words"].shape for call in text_client_fake.calls) == [(1, 300), (2, 2)]


def test_a_lone_surrogate_is_a_400_not_a_failed_batch(client, text_client_fake):
    reply = client.post("/lstm", data=b'{"lines": ["\\u597d", "\\ud800"]}', content_type="application/json")
    assert reply.status_code == 400 and reply.json["error"]["code"] == "invalid_text"
    assert text_client_fake.calls == [], "refused before any model call"


def test_get_with_urlsafe_base64(client):
    reply = client.get(f"/lstm?line={b64('好评')}")
    assert reply.status_code == 200 and reply.json["label"] in ("POS", "NEG")


def test_the_legacy_routes_keep_their_reply_shape(client):
    for reply in (client.get(f"/lstm/predict?line={b64('喜欢')}"),
                  client.post("/lstm/predict", data='{"line": "喜欢"}'),  # their client sends no Content-Type
                  client.post("/lstm/predict", json={"line": "喜欢"})):
        assert reply.status_code == 200
        assert reply.json == {"status": 0, "classes_id": 1, "labels": "POS",
                              "softmax": [pytest.approx(0.2), pytest.approx(0.8)]}


@pytest.mark.parametrize(("request_args", "status", "code"), [
    ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ({"json": ["a list"]}, 400, "invalid_json"),
    # Bodies pydantic's one-pass JSON parser (service_kit.http.routes._read_json) takes differently
    # from Flask's: the same answers either way.
    ({"data": '{"line": "a"} trailing', "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": '{"line": NaN}', "content_type": "application/json"}, 400, "invalid_field"),
    ({"data": '{"line": "a",}', "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": '{"lines": ' + "[" * 100_000, "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": '{"line": 1e999}', "content_type": "application/json"}, 400, "invalid_field"),
    ({"json": {}}, 400, "missing_field"),
    ({"json": {"line": "a", "lines": ["b"]}}, 400, "missing_field"),
    ({"json": {"line": 42}}, 400, "invalid_field"),
    ({"json": {"lines": "not a list"}}, 400, "invalid_field"),
    ({"json": {"lines": []}}, 400, "invalid_field"),
    ({"json": {"lines": ["a", 5]}}, 400, "invalid_field"),
    ({"data": "line=hello", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"json": {"line": "好" * 51}}, 413, "text_too_long"),
    ({"json": {"lines": ["好"] * 4}}, 413, "too_many_lines"),
    # jieba makes a word of each comma: 21 words in 21 characters, over the 20 words a text may have.
    ({"json": {"line": "，" * 21}}, 413, "too_many_words"),
    ({"json": {"lines": ["好", "很好，" * 7]}}, 413, "too_many_words"),
    ({"json": {"line": "   \n\t "}}, 422, "empty_text"),
    ({"json": {"line": ""}}, 422, "empty_text"),
])
def test_bad_posts_get_json_errors(client, text_client_fake, request_args, status, code):
    reply = client.post("/lstm", **request_args)
    assert reply.status_code == status
    assert reply.json["error"]["code"] == code
    assert reply.json["error"]["message"] and reply.json["error"]["request_id"]
    assert not text_client_fake.calls, "a refused request never reaches the model"


@pytest.mark.parametrize("body", [b'\xef\xbb\xbf{"line": "a"}', b' \r\n\t{"line": "a"}\n', b'{"line": "\\u597d"}'])
def test_json_that_only_the_standard_parser_takes_is_still_taken(client, body):
    """A UTF-8 byte-order mark, whitespace around the object, escapes: answered as before the
    one-pass parser (routes._read_json falls back to the standard library's)."""
    reply = client.post("/lstm", data=body, content_type="application/json")
    assert reply.status_code == 200, reply.json


@pytest.mark.parametrize(("query", "status", "code"), [
    ("", 400, "missing_field"),
    ("?line=%%%", 400, "invalid_base64"),
    ("?line=" + base64.urlsafe_b64encode(b"\xff\xfe").decode(), 400, "invalid_utf8"),
    ("?line=", 422, "empty_text"),
    # The text limit holds in the URL too (issue 33: 40,000 commas there were answered, after 0.9 s of a worker).
    ("?line=" + b64("好" * 51), 413, "text_too_long"),
    ("?line=" + b64("，" * 21), 413, "too_many_words"),
])
def test_bad_gets_get_json_errors(client, text_client_fake, query, status, code):
    for path in ("/lstm", "/lstm/predict"):
        reply = client.get(path + query)
        assert (reply.status_code, reply.json["error"]["code"]) == (status, code), path
    assert not text_client_fake.calls, "a refused request never reaches the model"


def test_a_text_at_the_word_limit_is_answered(client):
    assert client.post("/lstm", json={"line": "，" * 19 + "好"}).status_code == 200


def test_unknown_route_and_wrong_method(client):
    assert client.get("/nope").json["error"]["code"] == "not_found"
    reply = client.delete("/lstm")
    assert reply.status_code == 405 and reply.json["error"]["code"] == "method_not_allowed"
    assert "POST" in reply.headers["Allow"]


def test_body_over_the_limit_is_413():
    app = service_app(SentimentService, TextApiSettings(max_body_bytes=1000), client=None)
    reply = app.test_client().post("/lstm", json={"line": "好" * 2000})
    assert reply.status_code == 413 and reply.json["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(("failure", "status", "code"), [
    (grpc.StatusCode.UNAVAILABLE, 503, "model_unavailable"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 503, "model_unavailable"),
    (grpc.StatusCode.NOT_FOUND, 503, "model_not_loaded"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "model_timeout"),
    (grpc.StatusCode.INTERNAL, 502, "model_error"),
])
def test_model_server_failures_map_to_http(client, text_client_fake, failure, status, code):
    text_client_fake.fail_with = failure
    reply = client.post("/lstm", json={"line": "好"})
    assert reply.status_code == status and reply.json["error"]["code"] == code
    assert ("Retry-After" in reply.headers) == (status == 503)


def test_request_id_is_passed_through_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id; <script>"}).headers["X-Request-ID"]
    assert len(made) == 32 and "<" not in made


def test_health_readiness_and_metrics(client, text_client_fake):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["available_versions"] == [1]
    client.post("/lstm", json={"line": "好"})
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{method="POST",route="/lstm",status="200"}' in metrics
    assert "model_request_batch_size_bucket" in metrics


def test_readiness_is_not_repeated_once_the_channel_knows_the_model_server_unreachable(text_client_fake):
    """Issue 33: a cached "ready" outlived the channel's connection, and the instance answered 503 to
    every request while its /readyz (and so `./stack up`) said ready."""
    app = service_app(SentimentService, TextApiSettings(readiness_cache_seconds=60), client=text_client_fake)
    assert app.test_client().get("/readyz").status_code == 200
    text_client_fake.fail_with = grpc.StatusCode.UNAVAILABLE  # the connection is lost
    assert app.test_client().post("/lstm", json={"line": "好"}).status_code == 503
    assert app.test_client().get("/readyz").status_code == 503
    text_client_fake.fail_with = None  # reconnected
    assert app.test_client().get("/readyz").status_code == 503, "a 'not ready' is cached as before"


def test_readiness_reports_an_unreachable_model_server(text_client_fake):
    app = service_app(SentimentService, TextApiSettings(readiness_cache_seconds=0), client=text_client_fake)
    text_client_fake.fail_with = grpc.StatusCode.UNAVAILABLE
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503 and reply.json["status"] == "not_ready" and reply.headers["Retry-After"]
