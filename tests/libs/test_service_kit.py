"""service_kit pieces on their own: settings from the environment, base64, content negotiation, logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import socket
import string
import struct
import subprocess
import sys
import time

import grpc
import pytest
from flask import Flask, request
from model_rollout.settings import RolloutSettings
from prometheus_client import REGISTRY
from pydantic import TypeAdapter, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from service_kit.core import metrics
from service_kit.core.refusals import DeadlineExceeded, Shed
from service_kit.core.settings import ServiceSettings
from service_kit.http.admission import client_gone
from service_kit.http.app import create_service_app
from service_kit.http.contract import Base64Bytes
from service_kit.http.errors import ApiError
from service_kit.http.inputs import json_object, request_body
from service_kit.http.logs import JsonFormatter
from service_kit.http.routes import refusal
from tests.conftest import REPO_ROOT
from text_api.sentiment import SentimentService
from text_api.settings import TextApiSettings
from tfserving_client import ModelServerError
from vision_api.saliency import SaliencyService
from vision_api.settings import VisionApiSettings


def test_settings_read_the_environment_with_types():
    settings = TextApiSettings.from_env({"MODEL_TIMEOUT_SECONDS": "2.5", "MAX_LINES": "8",
                                         "TFSERVING_GRPC_ADDRESS": "tfserving:8500"})
    assert settings.model_timeout_seconds == 2.5 and settings.max_lines == 8
    assert settings.tfserving_address == "tfserving:8500"
    assert TextApiSettings.from_env({}).max_lines == 64


def test_a_services_model_and_body_limit_come_from_its_roster_entry_unless_set():
    """Issue 34: each service's settings said `model_name = env("MODEL_NAME", ROSTER_ENTRY.models[0])`
    and the same for its body limit; forgotten, the model name was ""."""
    filled = SentimentService(object(), TextApiSettings()).settings
    assert (filled.model_name, filled.max_body_bytes) == ("lstm", 512 * 1024)
    assert SaliencyService(object(), VisionApiSettings()).settings.max_body_bytes == 20 * 2**20
    chosen = SentimentService(object(), TextApiSettings.from_env({"MODEL_NAME": "lstm_v2", "MAX_BODY_BYTES": "1000"}))
    assert (chosen.settings.model_name, chosen.settings.max_body_bytes) == ("lstm_v2", 1000)
    from bench.constant_app import ConstantSentiment  # a subclass outside the service's folder

    assert ConstantSentiment(object(), TextApiSettings()).settings.model_name == "lstm"
    bare = create_service_app(__name__, ServiceSettings(model_name="m"), client=object())
    assert bare.config["MAX_CONTENT_LENGTH"] == 1024 * 1024, "an app outside the roster (a test's)"


def test_a_bad_value_names_its_variable():
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        VisionApiSettings.from_env({"MAX_IMAGE_PIXELS": "lots"})


def test_every_service_shares_the_base_variable_names():
    base = set(ServiceSettings.variables())
    assert base <= set(TextApiSettings.variables()) and base <= set(VisionApiSettings.variables())


@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_standard_or_urlsafe_with_or_without_padding(encode):
    raw = bytes(range(256))
    text = encode(raw).decode()
    assert TypeAdapter(Base64Bytes).validate_python(text) == raw
    assert TypeAdapter(Base64Bytes).validate_python(text.rstrip("=")) == raw


def test_bad_base64_is_a_400():
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(Base64Bytes).validate_python("ab$cd")
    assert refusal(caught.value).status == 400 and refusal(caught.value).code == "invalid_base64"


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"line": ' + b"[" * 50_000, b"\xff\xfe", b"[1]"])
def test_json_that_is_too_deep_broken_or_not_an_object_is_a_400(body):
    with Flask(__name__).app_context():
        with pytest.raises(ApiError) as caught:
            json_object(body)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_is_read_whole_declared_or_chunked(chunked):
    body = b'{"line": "' + "好".encode() * 1000 + b'"}'
    app = Flask(__name__)
    headers = {"Transfer-Encoding": "chunked"} if chunked else {}
    environ = {"wsgi.input_terminated": True} if chunked else {}
    with app.test_request_context("/lstm", method="POST", input_stream=io.BytesIO(body), headers=headers,
                                  content_length=None if chunked else len(body), environ_overrides=environ):
        assert request_body(request) == body


def test_a_body_declared_past_the_limit_is_a_413_before_it_is_read():
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 10
    with app.test_request_context("/lstm", method="POST", data=b"x" * 11):
        with pytest.raises(RequestEntityTooLarge):
            request_body(request)


def test_log_lines_are_json_with_extra_fields():
    record = logging.LogRecord("service_kit.access", logging.INFO, __file__, 1, "request", None, None)
    record.request_id, record.status = "abc", 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request" and line["request_id"] == "abc" and line["status"] == 200
    assert line["level"] == "info" and line["ts"].endswith("+00:00")


def test_every_variable_is_documented():
    documented = (REPO_ROOT / "services" / "README.md").read_text()
    gunicorn_base = (REPO_ROOT / "libs" / "service_kit" / "service_kit" / "http" / "gunicorn_config.py").read_text()
    names = {*TextApiSettings.variables(), *VisionApiSettings.variables(), *RolloutSettings.variables(),
             *re.findall(r'os\.environ\.get\("([A-Z_]+)"', gunicorn_base)}
    missing = sorted(name for name in names if f"`{name}`" not in documented)
    assert not missing, f"undocumented in services/README.md: {missing}"


@pytest.mark.parametrize(("settings", "path", "logged"), [
    (ServiceSettings(model_name="m"), "/ok", False),
    (ServiceSettings(model_name="m"), "/missing", True),
    (ServiceSettings(model_name="m", access_log_slow_ms=0.0), "/ok", True),
    (ServiceSettings(model_name="m", access_log_all=True), "/ok", True),
    (ServiceSettings(model_name="m", access_log_all=True), "/healthz", False),
])
def test_access_lines_for_failures_and_slow_requests_unless_all_asked(settings, path, logged, caplog):
    app = create_service_app(__name__, settings, client=object())
    app.add_url_rule("/ok", "ok", lambda: "fine")
    with caplog.at_level(logging.INFO, logger="service_kit.access"):
        app.test_client().get(path)
    assert bool([r for r in caplog.records if r.name == "service_kit.access"]) is logged


def test_the_access_line_names_the_address_nginx_saw_not_one_the_client_wrote(caplog):
    """Issue 33: `remote` was X-Forwarded-For's first entry, which the client writes."""
    app = create_service_app(__name__, ServiceSettings(model_name="m"), client=object())
    with caplog.at_level(logging.INFO, logger="service_kit.access"):
        app.test_client().get("/missing", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7",
                                                   "X-Real-IP": "203.0.113.7"})
        app.test_client().get("/missing", headers={"X-Forwarded-For": "6.6.6.6"})  # not through nginx
    assert [r.remote for r in caplog.records if r.name == "service_kit.access"] == ["203.0.113.7", "127.0.0.1"]


def test_gunicorn_builds_no_access_line_of_its_own(monkeypatch, tmp_path):
    """gunicorn computes its access atoms whenever a log config is set, only to drop the line."""
    import gunicorn.config
    from gunicorn.app.base import Application

    class Config(Application):
        def init(self, parser, opts, args):
            return None

        def load(self):
            return None

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the config would make one otherwise
    # gunicorn starts in its working directory (captured when gunicorn was first imported), where the
    # config reads the service's roster entry: the service's folder, as local mode starts it.
    monkeypatch.setattr(gunicorn.config.Chdir, "default", str(REPO_ROOT / "services" / "text-api"))
    monkeypatch.chdir(REPO_ROOT / "services" / "text-api")
    monkeypatch.setattr("sys.argv", ["gunicorn", "-c", "python:service_kit.http.gunicorn_config"])
    cfg = Config().cfg
    logger = cfg.logger_class(cfg)
    assert type(logger).__name__ == "NoAccessLineLogger"
    atoms_built = []
    monkeypatch.setattr(logger, "atoms", lambda *args: atoms_built.append(args) or {})
    logger.access(resp=None, req=None, environ={}, request_time=None)
    assert not atoms_built


@pytest.mark.parametrize(("error", "status", "code"), [
    (Shed("queue_full", "full"), 503, "overloaded"),
    (Shed("predicted_late", "late"), 503, "deadline_unreachable"),
    (Shed("expired", "late"), 503, "deadline_unreachable"),
    (DeadlineExceeded("late"), 504, "model_timeout"),
    (ModelServerError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), 504, "model_timeout"),
    # A model server stopping cancels the calls that raced its stop: not a slow model.
    (ModelServerError(grpc.StatusCode.CANCELLED, "CANCELLED"), 503, "model_unavailable"),
    (ModelServerError(grpc.StatusCode.UNAVAILABLE, "Socket closed"), 503, "model_unavailable"),
])
def test_the_batchers_refusals_are_json_with_their_own_status_not_500s(error, status, code):
    app = create_service_app(__name__, ServiceSettings(model_name="m"), client=object())

    def fail():
        raise error

    app.add_url_rule("/fail", "fail", fail)
    reply = app.test_client().get("/fail")
    assert reply.status_code == status and reply.json["error"]["code"] == code
    assert ("Retry-After" in reply.headers) is (status == 503)


RECYCLING = """
import json, os, sys, time
from service_kit.core import metrics

def scrape():
    started = time.perf_counter()
    body = metrics.exposition()[0].decode()
    return body, time.perf_counter() - started

def recycle(times):
    for _ in range(times):
        pid = os.fork()
        if pid == 0:  # a worker's life: answer 3 requests, then exit (as max_requests does)
            for _ in range(3):
                metrics.HTTP_REQUESTS.labels("/lstm", "POST", "200").inc()
                metrics.MODEL_BATCH_SIZE.labels("lstm").observe(4)
            os._exit(0)
        os.waitpid(pid, 0)
        metrics.archive_dead_worker(pid)

recycle(1)
_, after_one = min(scrape() for _ in range(5))
recycle(int(sys.argv[1]) - 1)
body, after_all = min(scrape() for _ in range(5))
lines = dict(line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
print(json.dumps({"files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])),
                  "requests": float(lines['http_requests_total{method="POST",route="/lstm",status="200"}']),
                  "batches": float(lines['model_request_batch_size_count{model="lstm"}']),
                  "examples": float(lines['model_request_batch_size_sum{model="lstm"}']),
                  "after_one": after_one, "after_all": after_all}))
"""


def test_recycled_workers_leave_exact_totals_and_no_files_behind(tmp_path):
    """gunicorn recycles workers (max_requests); hundreds of recycles must not slow /metrics."""
    recycles = 300
    result = subprocess.run([sys.executable, "-c", RECYCLING, str(recycles)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert (outcome["requests"], outcome["batches"], outcome["examples"]) == (3 * recycles, 3 * recycles,
                                                                              12 * recycles)
    assert [f for f in outcome["files"] if f.endswith(".db")] == ["counter_archive.db", "histogram_archive.db"]
    assert outcome["after_all"] < 3 * outcome["after_one"] + 0.005, outcome


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service_kit.access"]


def raising(error: Exception):
    """A view that fails with `error`."""

    def view():
        raise error

    return view


def test_sheds_are_counted_and_never_logged_other_failures_still_are(caplog):
    from service_kit.core.refusals import Busy

    app = create_service_app(__name__, ServiceSettings(model_name="shedding"), client=object())
    refusals = {"/busy": Busy("no decoder free"), "/full": Shed("queue_full", "full"),
                "/late": Shed("predicted_late", "late")}
    for path, error in refusals.items():
        app.add_url_rule(path, path, raising(error))
    client = app.test_client()

    def busy_count() -> float:
        return REGISTRY.get_sample_value("model_requests_shed_total", {"model": "shedding", "reason": "busy"}) or 0

    before = busy_count()
    with caplog.at_level(logging.INFO, logger="service_kit.access"):
        for _ in range(50):
            for path in refusals:
                assert client.get(path).status_code == 503
        assert client.get("/missing").status_code == 404
    assert [r.status for r in access_lines(caplog)] == [404], "150 sheds, no line; the 404 has its line"
    assert busy_count() == before + 50
    answered = REGISTRY.get_sample_value("http_requests_total", {"route": "/full", "method": "GET", "status": "503"})
    assert answered == 50


def test_made_up_methods_add_at_most_one_metric_series():
    app = create_service_app(__name__, ServiceSettings(model_name="m"), client=object())
    app.add_url_rule("/ok", "ok", lambda: "fine")
    client = app.test_client()

    def series(metric) -> set[tuple]:
        return {tuple((k, v) for k, v in sorted(sample.labels.items()) if k != "le")
                for sample in metric.collect()[0].samples}

    before = {metric: series(metric) for metric in (metrics.HTTP_REQUESTS, metrics.HTTP_LATENCY)}
    made_up = random.Random(20)
    for _ in range(100):
        method = "".join(made_up.choices(string.ascii_uppercase, k=made_up.randint(3, 12)))
        assert client.open("/ok", method=method).status_code in (400, 405)
    for metric, known in before.items():
        added = series(metric) - known
        assert len(added) <= 1 and all(dict(labels)["method"] == "other" for labels in added), added
    assert client.get("/ok").status_code == 200  # the standard ones keep their names
    assert REGISTRY.get_sample_value("http_requests_total", {"route": "/ok", "method": "GET", "status": "200"})


@pytest.fixture
def connection():
    """A client socket and the server's side of its connection, over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        yield client, accepted
        client.close()
        accepted.close()


def test_a_closed_connection_is_told_from_a_waiting_or_kept_alive_one(connection):
    client, accepted = connection
    assert not client_gone(accepted), "open, nothing sent"
    client.sendall(b"GET /next HTTP/1.1\r\n\r\n")  # the next request on a kept-alive connection
    time.sleep(0.05)
    assert not client_gone(accepted)
    assert accepted.recv(100).startswith(b"GET /next"), "the peek took nothing"
    assert accepted.gettimeout() is None, "the socket's own timeout is back"
    client.close()
    deadline = time.monotonic() + 2
    while not client_gone(accepted):
        assert time.monotonic() < deadline, "the close was not seen"
        time.sleep(0.01)


def test_a_reset_connection_is_gone(connection):
    client, accepted = connection
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST instead of FIN
    time.sleep(0.05)
    assert client_gone(accepted)


def test_the_check_never_blocks_a_gevent_socket():
    """gunicorn's gevent worker hands the app gevent sockets, whose recv waits when no byte is there."""
    import gevent
    from gevent import socket as gevent_socket

    with gevent_socket.create_server(("127.0.0.1", 0)) as server:
        client = gevent_socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with gevent.Timeout(2):
            assert not client_gone(accepted)
            client.close()
            gevent.sleep(0.05)
            assert client_gone(accepted)
        accepted.close()
