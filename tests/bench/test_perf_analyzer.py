"""Triton's perf_analyzer against the real model server in its shortest form (one bench/perf_analyzer.py
cell: `lstm`, two in flight, 2 s windows), through a recording gRPC proxy: it completes, every request
is answered OK by the server's own count, and the Predicts it sends carry the values it was given
(perf_analyzer 2.38 sends a JSON --input-data file's tensors to TF Serving with no values at all)."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc

from bench import perf_analyzer as bench
from local_stack.topology import free_port
from model_preprocessing.text import segment
from tests.conftest import required_in_ci
from tfserving_client.protos.tensorflow_serving.apis import predict_pb2


class RecordingProxy(grpc.GenericRpcHandler):
    """Forwards every call's bytes to the server unchanged, counts them by method and keeps the first
    Predict request."""

    def __init__(self, upstream: grpc.Channel):
        self.upstream = upstream
        self.first_predict: predict_pb2.PredictRequest | None = None
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def service(self, handler_call_details):
        method = handler_call_details.method

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.calls[method] = self.calls.get(method, 0) + 1
                if method.endswith("/Predict") and self.first_predict is None:
                    self.first_predict = predict_pb2.PredictRequest.FromString(request)
            try:
                return self.upstream.unary_unary(method)(request, timeout=30)
            except grpc.RpcError as error:
                context.abort(error.code(), error.details())

        return grpc.unary_unary_rpc_method_handler(forward)


def test_perf_analyzer_completes_with_answers_to_the_inputs_it_was_given(tmp_path):
    binary = bench.perf_analyzer_binary()
    if binary is None:
        required_in_ci("the perf_analyzer test", "no perf_analyzer (scripts/bootstrap.sh --for-tests installs it)")
    with bench.model_server(tmp_path, ["lstm"]) as server, grpc.insecure_channel(server.grpc_address) as upstream:
        assert bench.check_signature(server, "lstm")
        proxy = RecordingProxy(upstream)
        relay = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[proxy])
        port = free_port()
        relay.add_insecure_port(f"127.0.0.1:{port}")
        relay.start()
        try:
            cell = bench.run_cell(binary, server, bench.Cell("lstm", "concurrency", 2),
                                  bench.write_input_data("lstm", tmp_path), tmp_path, window_ms=2000,
                                  stability=100, max_trials=5, address=f"127.0.0.1:{port}")
        finally:
            relay.stop(grace=None)
    output = (tmp_path / "lstm-concurrency-2.out").read_text()
    assert cell.returncode == 0 and not cell.problem, output[-3000:]
    assert cell.infer_per_s > 0 and cell.requests > 0 and cell.p99_ms >= cell.p50_ms > 0, cell
    assert cell.server_not_ok == 0, cell
    # The server counts every call naming the model: perf_analyzer's one GetModelMetadata, then its Predicts.
    assert proxy.calls.pop("/tensorflow.serving.PredictionService/GetModelMetadata") == 1, proxy.calls
    assert set(proxy.calls) == {"/tensorflow.serving.PredictionService/Predict"}, proxy.calls
    assert cell.server_ok == sum(proxy.calls.values()) + 1, "every call it made was answered OK"
    assert sum(proxy.calls.values()) >= cell.requests
    sent = proxy.first_predict
    words = [word.encode() for word in segment(bench.SENTENCE)]
    assert sent.model_spec.name == "lstm" and sent.model_spec.signature_name == "serving_default"
    assert [d.size for d in sent.inputs["words"].tensor_shape.dim] == [1, len(words)]
    assert list(sent.inputs["words"].string_val) == words, "the words themselves, not an empty tensor"
    assert list(sent.inputs["nwords"].int_val) == [len(words)]
