"""Cheap requests that used to cost the model server gigabytes or a thread for good (issue 20, item 6).

Against a server of ours the memory is measured (the process's peak RSS); against another
server (TFSERVING_GRPC_ADDRESS) only the answers are checked.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import psutil
import pytest
import requests
from tensorflow_serving.apis import prediction_service_pb2_grpc

from model_server.rest_api import MAX_BODY_BYTES
from tests.conftest import copy_repository, start_model_server, wait_until
from tests.tfserving.hostile import closed_by_server, idle_connections, padded_predict, peak_rss
from tests.tfserving.test_grpc_conformance import image_request

# What one refused request may add to the server's peak memory (its decoding used to add 3.8 GB).
MAX_GROWTH_BYTES = 200 * 2**20


def measured(serving, action):
    """`action()`'s result, and how much it raised the server's peak RSS (0 for a server not ours)."""
    if serving.process is None:
        return action(), 0
    with peak_rss(serving.process.process.pid) as rss:
        result = action()
    return result, rss["peak"] - rss["before"]


def test_a_padded_tensor_is_refused_quickly_without_decoding_it(serving, prediction_stub):
    def predict():
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            prediction_stub.Predict(padded_predict(), timeout=60)
        return caught.value, time.monotonic() - started

    (error, seconds), growth = measured(serving, predict)
    assert growth < MAX_GROWTH_BYTES, f"peak RSS grew by {growth / 2**20:.0f} MB"
    assert seconds < 2, f"answered in {seconds:.1f} s"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "limit" in error.details()


def test_a_message_over_the_limit_is_refused_by_grpc(serving):
    from model_server.tensors import MAX_REQUEST_BYTES

    request = image_request()
    request.inputs["img_in"].tensor_content = b"\0" * (MAX_REQUEST_BYTES + 1)
    with grpc.insecure_channel(serving.grpc_address, options=[("grpc.max_send_message_length", -1)]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()


def test_a_json_body_declaring_millions_of_strings_is_refused(serving):
    """2.4 M empty strings are a 7 MB body and 77 MB decoded; fed to lstm, 20 M of them took 21 GB."""
    body = b'{"inputs": {"words": [[' + b'"",' * 2_400_000 + b'""]], "nwords": [1]}}'
    reply, growth = measured(
        serving, lambda: requests.post(f"{serving.rest_url}/v1/models/lstm:predict", data=body, timeout=60))
    assert reply.status_code == 400, reply.text[:300]
    assert "limit" in reply.json()["error"]
    assert growth < MAX_GROWTH_BYTES, f"peak RSS grew by {growth / 2**20:.0f} MB"


def test_json_nested_too_deeply_is_400_not_500(serving):
    body = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = requests.post(f"{serving.rest_url}/v1/models/lstm:predict", data=body, timeout=30)
    assert reply.status_code == 400, reply.text[:300]


def test_a_rest_body_over_the_limit_is_refused_unread(serving):
    reply = requests.post(f"{serving.rest_url}/v1/models/lstm:predict", data=b" " * (MAX_BODY_BYTES + 1), timeout=30)
    assert reply.status_code in (413, 429), reply.text[:300]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, serving):
    """A server of ours with 2 REST threads, a 1 s REST timeout and 1 gRPC thread."""
    if serving.process is None:
        pytest.skip("the limits are this server's flags")
    base = tmp_path_factory.mktemp("small-server")
    target, process = start_model_server(copy_repository(base / "models"), base / "model_server.log",
                                         "--rest_api_num_threads=2", "--rest_api_timeout_in_ms=1000",
                                         "--grpc_max_threads=1")
    yield target, psutil.Process(process.process.pid)
    process.stop()


def test_grpc_calls_past_what_its_threads_may_queue_are_refused_at_once(small_server):
    """Each waiting call holds what gRPC buffered of its message: with 1 thread, 4 calls at once at
    most (the first ones finish while the last arrive, so more than 4 of the 12 may be answered)."""
    target, _ = small_server
    codes: list[grpc.StatusCode] = []
    with grpc.insecure_channel(target.grpc_address, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def predict():
            try:
                stub.Predict(image_request(batch=4), timeout=60)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())

        callers = [threading.Thread(target=predict) for _ in range(12)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(60)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


def test_idle_rest_connections_take_no_more_threads_than_the_cap(small_server):
    target, server = small_server
    before = server.num_threads()
    sockets = idle_connections(target.rest_url, 20)
    try:
        time.sleep(0.5)
        assert server.num_threads() <= before + 2, "one thread per connection, unbounded"
        started = time.monotonic()
        reply = requests.get(f"{target.rest_url}/v1/models/lstm", timeout=60)
        assert reply.status_code == 200
        # 20 connections ahead of it, 2 at a time, each closed after 1 s idle: ~10 s.
        assert time.monotonic() - started < 20
        wait_until(lambda: all(closed_by_server(s) for s in sockets), 5, "the server to close idle connections")
    finally:
        for sock in sockets:
            sock.close()


def test_a_client_sending_a_byte_now_and_then_is_cut_off(small_server):
    """Each byte comes well within the timeout, so only a deadline for the whole request ends it."""
    target, _ = small_server
    host, port = target.rest_url.removeprefix("http://").split(":")
    head = b"GET /v1/models/lstm HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000
    cut_off = threading.Event()

    def drip():
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    cut_off.set()
                    return
                if closed_by_server(sock):
                    cut_off.set()
                    return
                sock.settimeout(5)
                time.sleep(0.1)

    started = time.monotonic()
    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    thread.join(20)
    assert cut_off.is_set(), "the server kept reading a request that takes 100 s to arrive"
    assert time.monotonic() - started < 5
