"""tfserving_client on its own: tensor encoding, deadlines, retries, and a fork-safe channel."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from tests.conftest import free_port
from tfserving_client import ModelServerClient, ModelServerError, from_tensor_proto, to_tensor_proto
from tfserving_client.client import PREDICT_METHOD, RetryBudget
from tfserving_client.protos.tensorflow.core.framework import types_pb2
from tfserving_client.protos.tensorflow_serving.apis import predict_pb2


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"])
def test_numeric_tensors_round_trip_as_packed_content(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    proto = to_tensor_proto(array)
    assert proto.tensor_content and not proto.float_val and not proto.int_val
    decoded = from_tensor_proto(proto)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_big_endian_input_is_sent_little_endian():
    array = np.array([1.5, -2.0], dtype=">f4")
    np.testing.assert_array_equal(from_tensor_proto(to_tensor_proto(array)), [1.5, -2.0])


def test_strings_use_string_val_and_accept_str_or_bytes():
    proto = to_tensor_proto(np.array([["很", b"\xff"], ["好", "<pad>"]], dtype=object))
    assert proto.dtype == types_pb2.DT_STRING and not proto.tensor_content
    assert list(proto.string_val) == ["很".encode(), b"\xff", "好".encode(), b"<pad>"]
    assert from_tensor_proto(proto).tolist() == [["很".encode(), b"\xff"], ["好".encode(), b"<pad>"]]


def test_compact_and_typed_value_fields_decode():
    proto = to_tensor_proto(np.zeros((2, 2), np.float32))
    proto.ClearField("tensor_content")
    proto.float_val.append(3.0)  # TF's "every element is 3.0"
    np.testing.assert_array_equal(from_tensor_proto(proto), np.full((2, 2), 3.0, np.float32))
    proto = to_tensor_proto(np.zeros(3, np.int64))
    proto.ClearField("tensor_content")
    proto.int64_val.extend([4, 5, 6])
    np.testing.assert_array_equal(from_tensor_proto(proto), [4, 5, 6])


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError):
        to_tensor_proto(np.array([1 + 2j]))


class SlowPredictServer:
    """A real gRPC server speaking the Predict method, answering after `delay` seconds."""

    def __init__(self, delay: float = 0.0, port: int | None = None, host: str = "127.0.0.1"):
        self.delay = delay
        self.calls = 0
        self.port = port or free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": grpc.unary_unary_rpc_method_handler(
                self.predict, request_deserializer=predict_pb2.PredictRequest.FromString,
                response_serializer=predict_pb2.PredictResponse.SerializeToString),
        })
        self.server.add_generic_rpc_handlers([handler])
        self.server.add_insecure_port(f"{host}:{self.port}")
        self.server.start()

    def predict(self, request, context):
        self.calls += 1
        time.sleep(self.delay)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 5
        doubled = from_tensor_proto(request.inputs["x"]) * 2
        response.outputs["y"].CopyFrom(to_tensor_proto(doubled))
        return response


@pytest.fixture
def echo_server():
    server = SlowPredictServer()
    yield server
    server.server.stop(None)


def test_predict_over_a_real_socket(echo_server):
    observed = []
    client = ModelServerClient(f"127.0.0.1:{echo_server.port}", observer=lambda *a: observed.append(a))
    result = client.predict("m", {"x": np.array([1.0, 2.5], np.float32)})
    assert result.model_name == "m" and result.model_version == 5
    np.testing.assert_array_equal(result.outputs["y"], [2.0, 5.0])
    assert observed[0][:2] == ("Predict", "m") and observed[0][3] == "OK"
    assert PREDICT_METHOD == "/tensorflow.serving.PredictionService/Predict"
    client.close()


def test_deadline_is_enforced():
    server = SlowPredictServer(delay=2.0)
    try:
        client = ModelServerClient(f"127.0.0.1:{server.port}", timeout_seconds=0.3)
        started = time.monotonic()
        with pytest.raises(ModelServerError) as caught:
            client.predict("m", {"x": np.zeros(1, np.float32)})
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0
        assert server.calls == 1, "a deadline is not retried"
    finally:
        server.server.stop(None)


def test_a_server_known_to_be_down_gets_one_fast_attempt_not_retries():
    """During a model-server outage the caller's 503 should not wait out retries and backoffs."""
    observed = []
    client = ModelServerClient(f"127.0.0.1:{free_port()}", timeout_seconds=2.0, retries=2,
                               observer=lambda *a: observed.append(a[3]))
    with pytest.raises(ModelServerError):
        client.predict("m", {"x": np.zeros(1, np.float32)})  # the channel learns the server is down
    deadline = time.monotonic() + 5
    while not client.connection_failing():
        assert time.monotonic() < deadline, "the channel never saw the failure"
        time.sleep(0.01)
    observed.clear()
    started = time.monotonic()
    with pytest.raises(ModelServerError) as caught:
        client.predict("m", {"x": np.zeros(1, np.float32)})
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert observed == ["UNAVAILABLE"], "one attempt"
    assert time.monotonic() - started < 0.05


class SheddingServer(SlowPredictServer):
    """Answers as TF Serving does when its batch queue is full."""

    def predict(self, request, context):
        self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE,
                      "The batch scheduling queue to which this task was submitted is full")


def test_a_server_that_sheds_load_is_not_asked_again():
    server = SheddingServer()
    try:
        client = ModelServerClient(f"127.0.0.1:{server.port}", timeout_seconds=2.0, retries=2)
        for _ in range(3):
            with pytest.raises(ModelServerError) as caught:
                client.predict("m", {"x": np.zeros(1, np.float32)})
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert server.calls == 3, "each request reached the server once: no retries added to the load it sheds"
    finally:
        server.server.stop(None)


def test_the_retry_budget_caps_retries_at_a_share_of_the_calls():
    budget = RetryBudget(max_tokens=10, ratio=0.1)
    allowed = [budget.failed_may_retry() for _ in range(20)]
    assert allowed[:4] == [True] * 4 and not any(allowed[5:]), allowed
    for _ in range(100):
        budget.succeeded()
    assert budget.failed_may_retry(), "successes earn retries back"


def test_calls_succeed_again_once_the_server_is_back_without_a_restart():
    port = free_port()
    client = ModelServerClient(f"127.0.0.1:{port}", timeout_seconds=1.0)
    with pytest.raises(ModelServerError):
        client.predict("m", {"x": np.ones(2, np.float32)})
    server = SlowPredictServer(port=port)
    try:
        deadline = time.monotonic() + 5  # the channel reconnects within its 1 s maximum backoff
        while True:
            try:
                result = client.predict("m", {"x": np.ones(2, np.float32)})
                break
            except ModelServerError:
                assert time.monotonic() < deadline, "the channel did not reconnect"
                time.sleep(0.05)
        np.testing.assert_array_equal(result.outputs["y"], [2.0, 2.0])
    finally:
        server.server.stop(None)


def test_a_new_process_gets_its_own_channel(echo_server, monkeypatch):
    """gunicorn forks workers from the master; a channel must never cross a fork."""
    client = ModelServerClient(f"127.0.0.1:{echo_server.port}")
    client.predict("m", {"x": np.ones(1, np.float32)})
    [parent_server] = client._servers
    monkeypatch.setattr("tfserving_client.client.os.getpid", lambda: -1)
    client.predict("m", {"x": np.ones(1, np.float32)})
    assert client._servers[0].channel is not parent_server.channel
