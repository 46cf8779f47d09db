"""Our model server as a drop-in `tensorflow_model_server`: the behaviours TF Serving's own
integration suite (model_servers/tensorflow_model_server_test.py) checks, written as our tests
over our own half_plus_two (tests/tfserving/half_plus_two.py), started with the suite's flags.
`python -m tests.tfserving.tf_serving_suite --serving PATH` runs that suite itself."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from local_stack.topology import free_port
from model_server import flags
from model_server.config import BatchingParameters
from model_server.core import ModelSpec, ServerCore
from tests.conftest import REPO_ROOT, ManagedProcess, wait_until
from tests.tfserving.half_plus_two import VERSION, export_half_plus_two

MODEL = "half_plus_two"


class Server:
    def __init__(self, base, tmp, *extra: str):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.socket = tmp / "grpc.sock"
        self.log = tmp / f"server-{self.grpc_port}.log"
        self.process = ManagedProcess(
            [sys.executable, "-m", "model_server", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             "--rest_api_timeout_in_ms=5000", f"--grpc_socket_path={self.socket}",
             "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1",
             f"--model_name={MODEL}", f"--model_base_path={base}", "--listen_address=127.0.0.1",
             "--enable_grpc_healthcheck_service", "--rest_api_enable_cors_support", *extra],
            self.log,
        )
        self.rest = f"http://127.0.0.1:{self.rest_port}/v1/models/{MODEL}"
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        try:
            wait_until(lambda: self._ready(), 90, "the model server")
        except TimeoutError:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.process.alive(), self.process.log_text()
        return requests.get(self.rest, timeout=1).ok

    def stop(self) -> None:
        self.channel.close()
        self.process.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drop-in")
    export_dir = export_half_plus_two(tmp / MODEL, warmup_records=3)
    (export_dir / "batching_params.pbtxt").write_text("max_batch_size { value: 4 }\n")
    running = Server(tmp / MODEL, tmp, "--enable_batching", "--enable_per_model_batching_parameters")
    yield running
    running.stop()


def predict_request(shape=(1,), signature: str = "") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    for size in shape:
        request.inputs["x"].tensor_shape.dim.add().size = size
    return request


def examples_input(message, *values: float, context: dict | None = None) -> None:
    target = message.input.example_list_with_context if context else message.input.example_list
    for value in values:
        target.examples.add().features.feature["x"].float_list.value.append(value)
    for name, value in (context or {}).items():
        target.context.features.feature[name].float_list.value.append(value)


def test_a_zero_padded_version_folder_is_that_version(server):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    statuses = server.models.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in statuses] == [
        (VERSION, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    assert requests.get(server.rest, timeout=5).json() == {"model_version_status": [
        {"version": str(VERSION), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_predict_passes_shapes_on_as_tf_serving_does(server, shape):
    """[1] for a [?,1] input is what TF Serving's suite sends; the answer is in float_val."""
    request = predict_request(shape)
    request.output_filter.append("y")
    response = server.predictions.Predict(request, timeout=10)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert not response.outputs["y"].tensor_content, "TF Serving's default: typed fields, not tensor_content"
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == (MODEL, VERSION, "serving_default")


def test_a_far_off_deadline_is_no_deadline(server, tmp_path):
    """perf_analyzer's deadline is ~292 years away (9.2e18 s remaining at the server): it overflowed
    Python's lock waits, so every batched Predict was INTERNAL. A Python client can ask ~95 years."""
    response = server.predictions.Predict(predict_request(), timeout=3e9)
    assert list(response.outputs["y"].float_val) == [3.0]
    export_half_plus_two(tmp_path / MODEL)
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name, model.base_path = MODEL, str(tmp_path / MODEL)
    core = ServerCore(batching=BatchingParameters())
    try:
        core.apply_config(config)
        _, outputs = core.predict(ModelSpec(MODEL), {"x": np.array([[2.0]], np.float32)}, timeout=9.2e18)
        assert outputs["y"].tolist() == [[3.0]]
    finally:
        core.stop()


def test_a_versions_own_batching_parameters(server):
    """--enable_per_model_batching_parameters: the version's batching_params.pbtxt (max 4) rules."""
    request = predict_request((5, 1))
    request.inputs["x"].float_val.extend([2.0] * 4)
    with pytest.raises(grpc.RpcError) as caught:
        server.predictions.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 5 is larger than maximum input batch size 4" in caught.value.details()


def test_predict_over_the_unix_socket(server):
    with grpc.insecure_channel(f"unix:{server.socket}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(), timeout=10)
    assert list(response.outputs["y"].float_val) == [3.0]


def test_classify(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "classify_x_to_y"
    examples_input(request, 2.0, 4.0)
    response = server.predictions.Classify(request, timeout=10)
    assert [[(c.label, c.score) for c in item.classes] for item in response.result.classifications] == [
        [("", 3.0)], [("", 4.0)]]
    assert (response.model_spec.signature_name, response.model_spec.version.value) == ("classify_x_to_y", VERSION)


def test_classify_with_labels_and_a_context(server):
    """A context's features join every example's (an example's own win): x comes from the context."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "classify_classes"
    request.input.example_list_with_context.examples.add()
    request.input.example_list_with_context.context.features.feature["x"].float_list.value.append(2.0)
    response = server.predictions.Classify(request, timeout=10)
    assert [(c.label, c.score) for c in response.result.classifications[0].classes] == [("yes", 3.0), ("no", -2.0)]


def test_regress(server):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "regress_x_to_y"
    examples_input(request, 2.0)
    response = server.predictions.Regress(request, timeout=10)
    assert [r.value for r in response.result.regressions] == [3.0]


def multi_inference_request() -> inference_pb2.MultiInferenceRequest:
    """TF Serving's suite's: a regression and a classification of one example."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "tensorflow/serving/regress"),
                              ("classify_x_to_y", "tensorflow/serving/classify")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = MODEL, signature, method
    examples_input(request, 2.0)
    return request


def test_multi_inference_runs_every_task_on_the_same_examples(server):
    request = multi_inference_request()
    response = server.predictions.MultiInference(request, timeout=10)
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in response.results] == ["regress_x_to_y", "classify_x_to_y"]


@pytest.mark.parametrize(("mutate", "code", "message"), [
    (lambda r: r.tasks[1].model_spec.__setattr__("signature_name", "regress_x_to_y"),
     grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y"),
    (lambda r: r.tasks[1].__setattr__("method_name", "tensorflow/serving/predict"),
     grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name"),
    (lambda r: r.tasks[1].model_spec.__setattr__("name", "other"),
     grpc.StatusCode.INVALID_ARGUMENT, "must access the same model name"),
    (lambda r: r.input.Clear(), grpc.StatusCode.INVALID_ARGUMENT, "Input is empty"),
])
def test_multi_inference_refuses_as_tf_serving(server, mutate, code, message):
    request = multi_inference_request()
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        server.predictions.MultiInference(request, timeout=10)
    assert caught.value.code() == code and message in caught.value.details()


def test_classify_on_a_predict_signature_is_a_clear_error(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL, "serving_default"
    examples_input(request, 2.0)
    with pytest.raises(grpc.RpcError) as caught:
        server.predictions.Classify(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "No classification inputs found" in caught.value.details()


@pytest.mark.parametrize(("verb", "body", "expected"), [
    ("classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}, {"results": [[["", 3.0]]]}),
    ("classify", {"signature_name": "classify_classes", "context": {"x": 2.0}, "examples": [{}]},
     {"results": [[["yes", 3.0], ["no", -2.0]]]}),
    ("regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]}, {"results": [3.0, 4.0]}),
    ("predict", {"instances": [2.0, 3.0, 4.0]}, {"predictions": [3.0, 3.5, 4.0]}),
    ("predict", {"inputs": [2.0, 3.0, 4.0]}, {"outputs": [3.0, 3.5, 4.0]}),
    ("predict", {"instances": [[2.0], [3.0]]}, {"predictions": [[3.0], [3.5]]}),
])
def test_rest_verbs(server, verb, body, expected):
    reply = requests.post(f"{server.rest}:{verb}", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json() == expected
    assert reply.headers["Access-Control-Allow-Origin"] == "*", "--rest_api_enable_cors_support"


@pytest.mark.parametrize("body", [{"examples": []}, {"examples": [{"x": [1.0, "a"]}]}, {"examples": [{"x": [[1.0]]}]},
                                  {"examples": [{"x": True}]}, {"examples": [{"x": {"b64": "!!"}}]}])
def test_rest_classify_refuses_bad_examples_with_json(server, body):
    reply = requests.post(f"{server.rest}:classify", json={"signature_name": "classify_x_to_y", **body}, timeout=10)
    assert reply.status_code == 400 and "error" in reply.json()


def test_rest_metadata_as_tf_serving_writes_it(server):
    metadata = requests.get(f"{server.rest}/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": str(VERSION)}
    default = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert default["defaults"] == {} and default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")
    assert server.predictions.GetModelMetadata(request, timeout=10).model_spec.version.value == VERSION


def test_cors_preflight(server):
    reply = requests.options(f"{server.rest}:predict", timeout=10)
    assert reply.status_code == 200 and reply.headers["Access-Control-Allow-Methods"] == "POST, GET"


def test_grpc_health_service(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


def test_warmup_records_were_replayed_before_available(server):
    log = server.process.log_text()
    assert "Number of warmup records read: 3" in log
    assert log.index("Number of warmup records read") < log.index("Successfully loaded servable version")


def run_server(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_server", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT / "tfserving", timeout=timeout)


def test_a_bad_model_config_fails_at_start(tmp_path):
    config = tmp_path / "bad.config"
    config.write_text("improperly formatted file")
    result = run_server(f"--port={free_port()}", f"--model_config_file={config}")
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--port=0", "--model_base_path=/m"], "At least one of server_options.grpc_port"),
    (["--model_name=x"], "Both server_options.model_base_path and server_options.model_config_file are empty"),
    (["--batching_parameters_file=/etc/hostname", "--model_base_path=/m"], "without setting"),
    (["--use_alts_credentials", "--ssl_config_file=/etc/hostname", "--model_base_path=/m"], "Either use_alts"),
    (["--grpc_channel_arguments=novalue", "--model_base_path=/m"], "KEY=VALUE"),
    (["--port=70000", "--model_base_path=/m"], "expected a port"),
    (["--no_such_flag=1", "--model_base_path=/m"], "unrecognized arguments: --no_such_flag"),
])
def test_bad_flags_fail_at_start(args, message):
    result = run_server(*args)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


def test_every_tf_serving_flag_is_accepted():
    """The flag names of TF Serving's main.cc, each with a value of its kind."""
    values = {bool: "true", int: "1", str: "x"}
    argv = []
    for name, kind, kind_type, default, _ in flags.FLAGS:
        if kind == flags.OURS or name == "version":
            continue
        if kind_type is flags.channel_arguments:
            argv.append(f"--{name}=a=1")
        elif isinstance(default, bool):
            argv.append(f"--{name}=false")
        else:
            argv.append(f"--{name}={values.get(type(default), '1')}")
    args = flags.build_parser().parse_args(argv)
    assert args.port == 1 and args.enable_model_warmup is False
    assert flags.not_applicable_given(argv) == sorted(n for n, k, *_ in flags.FLAGS if k == flags.NOT_APPLICABLE)
    assert {name for name, *_ in flags.FLAGS} >= TF_SERVING_FLAGS


# main.cc's tensorflow::Flag names (TF Serving 2.21), for the check above.
TF_SERVING_FLAGS = set("""port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms
rest_api_enable_cors_support enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name
model_base_path num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros
file_system_poll_wait_seconds flush_filesystem_caches tensorflow_session_parallelism tensorflow_session_config_file
tensorflow_intra_op_parallelism tensorflow_inter_op_parallelism use_alts_credentials ssl_config_file
platform_config_file per_process_gpu_memory_fraction saved_model_tags grpc_channel_arguments grpc_max_threads
enable_model_warmup num_request_iterations_for_warmup version monitoring_config_file
remove_unused_fields_from_bundle_metagraph prefer_tflite_model num_tflite_pools num_tflite_interpreters_per_pool
enable_signature_method_name_check xla_cpu_compilation_enabled xla_gpu_compilation_enabled enable_profiler
thread_pool_factory_config_file mixed_precision skip_initialize_tpu enable_grpc_healthcheck_service
enable_serialization_as_tensor_content""".split())


def test_version_flag():
    result = run_server("--version")
    assert result.returncode == 0 and result.stdout.startswith("TensorFlow ModelServer: ")


def test_inapplicable_flags_start_with_one_warning_and_tensor_content_when_asked(tmp_path):
    export_half_plus_two(tmp_path / MODEL)
    server = Server(tmp_path / MODEL, tmp_path, "--prefer_tflite_model=false", "--per_process_gpu_memory_fraction=0.5",
                    "--enable_serialization_as_tensor_content", "--enable_model_warmup=false",
                    "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
                    "--num_load_threads=2", "--max_num_load_retries=0")
    try:
        response = server.predictions.Predict(predict_request(), timeout=10)
        assert not response.outputs["y"].float_val
        np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), [3.0])
        log = server.process.log_text()
        assert log.count("accepted and ignored") == 1
        assert "--per_process_gpu_memory_fraction, --prefer_tflite_model" in log
    finally:
        server.stop()


def test_a_failed_load_is_retried_as_asked(tmp_path):
    """--max_num_load_retries: a version whose files arrive during the retries loads."""
    base, rest = tmp_path / MODEL, free_port()
    (base / "00000007").mkdir(parents=True)
    process = ManagedProcess(
        [sys.executable, "-m", "model_server", f"--port={free_port()}", f"--rest_api_port={rest}",
         f"--model_name={MODEL}", f"--model_base_path={base}", "--max_num_load_retries=30",
         "--load_retry_interval_micros=500000", "--file_system_poll_wait_seconds=0"], tmp_path / "retry.log")
    try:
        wait_until(lambda: "attempt 1 of 31" in process.log_text(), 60, "a first failed load")
        export_dir = export_half_plus_two(tmp_path / "staging")
        for item in export_dir.iterdir():
            item.rename(base / "00000007" / item.name)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{rest}/v1/models/{MODEL}", timeout=1).json()
                   ["model_version_status"][0]["state"] == "AVAILABLE", 60, "the retried load")
        reply = requests.post(f"http://127.0.0.1:{rest}/v1/models/{MODEL}:predict", json={"instances": [2.0]},
                              timeout=10)
        assert reply.json() == {"predictions": [3.0]}
    finally:
        process.stop()
    log = process.log_text()
    assert log.index("(attempt 1 of 31)") < log.index("Successfully loaded servable version")


def test_a_tf1_model_whose_shapes_are_tf1s_empty_no_shape(tmp_path):
    """Old exports (TF Serving's half_plus_three) write placeholders and signatures with an empty
    shape, which TF1 read as unknown and TensorFlow's Python loader now reads as a scalar: it
    fails to load them ("Shapes must be equal rank"); TF Serving serves them."""
    export_dir = export_half_plus_two(tmp_path / MODEL, add=3.0)
    saved_model = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for node in meta_graph.graph_def.node:
            if node.op == "Placeholder":
                node.attr["shape"].shape.Clear()
        for signature in meta_graph.signature_def.values():
            for info in (*signature.inputs.values(), *signature.outputs.values()):
                info.tensor_shape.Clear()
    (export_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    server = Server(tmp_path / MODEL, tmp_path)
    try:
        assert list(server.predictions.Predict(predict_request(), timeout=10).outputs["y"].float_val) == [4.0]
        metadata = requests.get(f"{server.rest}/metadata", timeout=10).json()
        declared = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
        assert declared["tensor_shape"] == {"dim": [], "unknown_rank": False}, "reported as declared"
        staged = [line for line in server.process.log_text().splitlines() if "loading it with them unknown" in line]
        assert len(staged) == 1
    finally:
        server.stop()
