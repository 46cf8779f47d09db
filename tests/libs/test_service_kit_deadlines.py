"""Each request's deadline: where it comes from, what is refused on arrival (before Flask), and
the Server-Timing each answer carries."""

from __future__ import annotations

import time

import pytest

from service_kit.core import deadlines
from service_kit.core.refusals import InvalidTimeout
from service_kit.core.service import ModelService
from service_kit.core.settings import ServiceSettings
from service_kit.http.app import create_service_app

SETTINGS = ServiceSettings(model_name="m", request_timeout_ms=1000.0, model_timeout_seconds=10.0)


@pytest.mark.parametrize(("header", "seconds"), [
    (None, 1.0), ("250", 0.25), (" 1 ", 0.001), ("60000", 10.0),  # clamped to MODEL_TIMEOUT_SECONDS
    ("9" * 5000, 10.0),  # past int()'s 4,300 digits: still the longest allowed, not a 500
])
def test_the_timeout_is_the_callers_within_bounds_else_the_services(header, seconds):
    assert deadlines.timeout_seconds(header, SETTINGS) == pytest.approx(seconds)


# schemathesis, with the document's old `number, exclusiveMinimum 0`: 5e-324 was 503 deadline_unreachable
# with Retry-After, though no retry could ever meet it.
@pytest.mark.parametrize("header", ["soon", "", "-1", "0", "000", "nan", "inf", "5e-324", "0.5", "1.0", "+5", "٣"])
def test_a_timeout_that_is_not_a_whole_positive_number_of_milliseconds_is_refused(header):
    with pytest.raises(InvalidTimeout):
        deadlines.timeout_seconds(header, SETTINGS)


def test_the_wait_before_the_worker_comes_from_nginxs_stamp_and_implausible_stamps_are_ignored():
    now = time.time()
    assert deadlines.waited_before(f"t={now - 0.25:.3f}") == pytest.approx(0.25, abs=0.05)
    for stamp in (None, "", "garbage", "t=abc", f"t={now + 5:.3f}", f"t={now - 3600:.3f}"):
        assert deadlines.waited_before(stamp) == 0.0


def test_server_timing_names_the_stages_a_request_reached():
    budget = deadlines.RequestBudget(received=9.0, deadline=11.0, arrived=10.0, submitted=10.001,
                                     dispatched=10.003, answered=10.008)
    assert budget.server_timing(10.009) == ("preprocess;dur=1.00, queue;dur=2.00, model;dur=5.00, "
                                            "postprocess;dur=1.00, total;dur=9.00")
    refused = deadlines.RequestBudget(received=9.0, deadline=11.0, arrived=10.0)
    assert refused.server_timing(10.0005) == "total;dur=0.50"


def test_a_recent_duration_allows_for_how_much_durations_vary_and_fades_unrenewed():
    steady, varied = deadlines.RecentDuration(), deadlines.RecentDuration()
    for seconds in [0.010] * 50:
        steady.observe(seconds, now=7.0)
    for seconds in [0.005, 0.015] * 25:
        varied.observe(seconds, now=7.0)
    assert steady.estimate(7.0) == pytest.approx(0.010, rel=0.01)
    assert varied.estimate(7.0) > 0.010 + (deadlines.DEVIATIONS - 0.5) * 0.005  # mean deviation ~5 ms
    assert steady.estimate(7.0 + deadlines.FADE_HALF_LIFE) == pytest.approx(0.005, rel=0.01)


class Counting:
    def __init__(self):
        self.calls = 0


def app_with_a_model_route(batching: str = "deadline"):
    settings = ServiceSettings(model_name="m", model_batching=batching, request_timeout_ms=1000.0)
    app = create_service_app(__name__, settings, client=object())
    app.extensions["service"] = ModelService(object(), settings)  # its queue is empty: ~5 ms a call
    seen = Counting()

    @app.post("/model")
    def model_route():
        seen.calls += 1
        return {"ok": True}

    return app, seen


def stamp(seconds_ago: float) -> dict[str, str]:
    return {"X-Request-Start": f"t={time.time() - seconds_ago:.3f}"}


def test_a_request_that_waited_past_its_deadline_is_refused_before_flask_sees_it():
    app, seen = app_with_a_model_route()
    client = app.test_client()
    assert client.post("/model", headers=stamp(0.5)).status_code == 200  # 500 of 1000 ms left
    refused = client.post("/model", headers={**stamp(0.2), "X-Request-Timeout-Ms": "203", "X-Request-ID": "r-1"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json["error"]["code"] == "deadline_unreachable" and refused.json["error"]["request_id"] == "r-1"
    assert seen.calls == 1, "refused before the view, and before Flask's hooks"
    for path in ("/healthz", "/metrics"):
        assert client.get(path, headers=stamp(5)).status_code == 200, "probes are never refused"


def test_a_burst_of_slow_requests_does_not_lock_the_worker_out():
    app, seen = app_with_a_model_route()
    client = app.test_client()
    preparation = app.extensions["service"].model_call.preparation
    for _ in range(3):
        preparation.observe(1.0, time.monotonic())  # a burst: preparing took a second
    assert client.post("/model", headers=stamp(0.001)).status_code == 503
    preparation.observe(1.0, time.monotonic() - 2.0)  # ... two seconds ago, and nothing let in since
    assert client.post("/model", headers=stamp(0.001)).status_code == 200 and seen.calls == 1


def test_the_headers_are_read_once_into_a_budget_and_the_older_modes_keep_their_fixed_deadline():
    """Issue 34: the middleware parsed the headers, then the request's hooks again; the older
    batching modes used a deadline of their own in the model call only. One read, one rule."""
    now = time.monotonic()
    budget = deadlines.read("250", f"t={time.time() - 0.1:.3f}", SETTINGS, now=now)
    assert budget.arrived == now and budget.received == pytest.approx(now - 0.1, abs=0.02)
    assert budget.deadline == pytest.approx(budget.received + 0.25)
    for mode in ("coalesce", "off"):
        older = deadlines.read("250", f"t={time.time() - 0.1:.3f}", ServiceSettings(model_batching=mode), now=now)
        assert older.deadline == now + 10.0 + 1, mode  # MODEL_TIMEOUT_SECONDS and a second, from arrival
    with pytest.raises(InvalidTimeout):
        deadlines.read("soon", None, ServiceSettings(model_batching="off"))


def test_the_older_batching_modes_refuse_nothing_on_arrival():
    app, seen = app_with_a_model_route("coalesce")
    assert app.test_client().post("/model", headers=stamp(5)).status_code == 200 and seen.calls == 1


def test_each_answer_carries_server_timing_and_a_bad_timeout_header_is_a_400():
    app, _ = app_with_a_model_route()
    client = app.test_client()
    answer = client.post("/model")
    assert answer.headers["Server-Timing"].startswith("total;dur=")
    bad = client.post("/model", headers={"X-Request-Timeout-Ms": "soon"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_timeout"
