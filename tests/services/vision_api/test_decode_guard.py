"""The worker-level guard, on the real service (gunicorn, gevent, the real model server): no
image, however slow to decode, stalls the worker or costs it its life (issue 20)."""

from __future__ import annotations

import concurrent.futures
import time

import psutil
import pytest
import requests

from tests.services.conftest import start_api
from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo

# The most scans allowed (32) over 40 MP: about 1 s of libjpeg, within every limit.
SLOW_TO_DECODE = crafted_images.many_scan_jpeg(26, 7700, 5190)
# Far below the decode's time: what a busy machine adds to a health check, not a blocked loop.
HEALTH_CHECK_BOUND_SECONDS = 0.3
NORMAL = encode(photo(300, 400), ".jpg")


def post(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/cv_sod", data=data, headers={"Content-Type": "image/jpeg"}, timeout=30)


def slowest_health_check_during(url: str, data: bytes) -> tuple[requests.Response, float]:
    """The answer to `data`, and the slowest of the /healthz calls made while it was decoded."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, url, data)
        time.sleep(0.1)
        slowest = 0.0
        while not answer.done():
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=10).ok
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
        return answer.result(), slowest


@pytest.fixture(scope="module")
def guarded(model_server, tmp_path_factory):
    """One worker, decodes cut off at 0.3 s: SLOW_TO_DECODE is past it, NORMAL well within."""
    log = tmp_path_factory.mktemp("vision-api-guard") / "log"
    instance = start_api("vision-api", model_server.grpc_address, log, 1, env={"DECODE_TIMEOUT_SECONDS": "0.3"})
    [worker] = psutil.Process(instance.process.process.pid).children()
    yield instance, worker
    instance.process.stop()


def test_the_worker_serves_on_while_an_image_is_decoded(vision_api):
    """Decoding ran on the worker's only gevent loop: nothing else on that worker, health checks
    included, was answered until it ended (a 10,000-scan JPEG: 30 s)."""
    reply, slowest = slowest_health_check_during(vision_api.url, SLOW_TO_DECODE)
    assert reply.status_code == 200, reply.text
    assert slowest < HEALTH_CHECK_BOUND_SECONDS, f"/healthz took {slowest * 1000:.0f} ms while an image was decoded"


def test_a_normal_image_does_not_wait_behind_a_costly_one(vision_api):
    """Issue 33: each worker had one decoding child, and a normal image waited for whatever it was
    decoding (up to DECODE_TIMEOUT_SECONDS); the compose stream test saw a 503 after 6.7 s."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        costly = pool.submit(post, vision_api.url, SLOW_TO_DECODE)
        time.sleep(0.15)  # it is being decoded
        started = time.monotonic()
        normal = post(vision_api.url, NORMAL)
        seconds = time.monotonic() - started
        assert normal.status_code == 200 and seconds < 0.5, f"the normal image took {seconds:.2f} s"
        assert not costly.done(), "the costly decode was over before the normal image came"
        assert costly.result().status_code == 200


def test_a_decode_past_its_time_is_a_413_and_costs_the_worker_nothing(guarded):
    instance, worker = guarded
    assert post(instance.url, NORMAL).status_code == 200
    decoders = worker.children()
    assert len(decoders) == 2, "DECODE_PROCESSES' default"
    started = time.monotonic()
    reply, slowest = slowest_health_check_during(instance.url, SLOW_TO_DECODE)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "image_too_costly", reply.text
    assert time.monotonic() - started < 2 and slowest < HEALTH_CHECK_BOUND_SECONDS
    after = post(instance.url, NORMAL)
    assert after.status_code == 200, f"the next image is answered: {after.text}"
    assert worker.is_running() and psutil.Process(instance.process.process.pid).children() == [worker]
    assert sum(not decoder.is_running() for decoder in decoders) == 1, "the decoder that overran was killed"
    assert len(worker.children()) == 2, "and replaced"
    assert "WORKER TIMEOUT" not in instance.process.log_text() and "SIGKILL" not in instance.process.log_text()
